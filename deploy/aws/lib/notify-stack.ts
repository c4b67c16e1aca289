// The notify platform in one AWS account and region:
//
// - a VPC over two AZs (public subnets for the bridges' NLB, private ones
//   with egress for the services, isolated ones for the database);
// - RDS Postgres (Multi-AZ) behind RDS Proxy — notify never pins a proxy
//   connection (no session SET, LISTEN, advisory locks or SQL PREPARE);
// - a Cognito user pool with the `admin` group, an app client for web and
//   mobile users, and an M2M app client (client credentials) whose scopes
//   are the Notify API's rights (notify/publish, notify/admin);
// - notify-svc replicas on ECS Fargate, each a service of one task with its
//   own Cloud Map name (every bridge links to every replica, so a bridge must
//   address each one), and an internal NLB across them for producers;
// - the bridges on ECS Fargate behind an internet-facing NLB that terminates
//   TLS on 443 with an ACM certificate (wss: tokens in `?token=` and every
//   notification are encrypted on the internet) and names each client to the
//   bridges with PROXY protocol v2 (their per-IP limits count clients, not
//   the balancer);
// - BetTracker on an EC2 instance under its systemd unit from
//   deploy/systemd/bet-tracker.service.
import * as fs from 'node:fs';
import * as path from 'node:path';

import {
  CfnOutput,
  Duration,
  RemovalPolicy,
  Stack,
  StackProps,
  aws_cognito as cognito,
  aws_ec2 as ec2,
  aws_ecs as ecs,
  aws_elasticloadbalancingv2 as elbv2,
  aws_iam as iam,
  aws_logs as logs,
  aws_rds as rds,
  aws_secretsmanager as secrets,
  aws_servicediscovery as discovery,
} from 'aws-cdk-lib';
import { Construct } from 'constructs';

export interface NotifyStackProps extends StackProps {
  /** The image built from the repository's Dockerfile, pushed to ECR. */
  readonly image: string;
  /** notify-svc replicas (each its own ECS service and DNS name). */
  readonly svcReplicas?: number;
  /** Bridge tasks behind the NLB. */
  readonly bridges?: number;
  /** Where the EC2 tracker downloads the bet-tracker binary from (s3://…). */
  readonly trackerBinaryUrl: string;
  /** Hosted UI / token endpoint prefix of the user pool (M2M tokens come from it). */
  readonly cognitoDomainPrefix: string;
  /** ACM certificate of the public WebSocket host name, for the NLB's TLS listener. */
  readonly certificateArn: string;
  /** The public WebSocket host name the certificate names (a DNS alias of the NLB). */
  readonly webSocketHost?: string;
}

/** Ports, as the binaries' defaults and deploy/systemd's env examples have them. */
const GRPC_PORT = 50051;
const WS_PORT = 8080;
const SVC_OPS_PORT = 9464;
const BRIDGE_OPS_PORT = 9465;

export class NotifyStack extends Stack {
  constructor(scope: Construct, id: string, props: NotifyStackProps) {
    super(scope, id, props);
    const svcReplicas = props.svcReplicas ?? 2;
    const bridges = props.bridges ?? 2;

    const vpc = new ec2.Vpc(this, 'Vpc', {
      maxAzs: 2,
      natGateways: 1,
      subnetConfiguration: [
        { name: 'public', subnetType: ec2.SubnetType.PUBLIC },
        { name: 'services', subnetType: ec2.SubnetType.PRIVATE_WITH_EGRESS },
        { name: 'data', subnetType: ec2.SubnetType.PRIVATE_ISOLATED },
      ],
    });

    // --- Postgres + RDS Proxy -------------------------------------------
    const dbSg = new ec2.SecurityGroup(this, 'DatabaseSg', { vpc, description: 'RDS Postgres' });
    const proxySg = new ec2.SecurityGroup(this, 'ProxySg', { vpc, description: 'RDS Proxy' });
    const servicesSg = new ec2.SecurityGroup(this, 'ServicesSg', {
      vpc,
      description: 'notify-svc, bridges and bet-tracker',
    });
    dbSg.addIngressRule(proxySg, ec2.Port.tcp(5432), 'the proxy');
    proxySg.addIngressRule(servicesSg, ec2.Port.tcp(5432), 'notify services');
    servicesSg.addIngressRule(servicesSg, ec2.Port.tcp(GRPC_PORT), 'Notify API and bridge links');

    const db = new rds.DatabaseInstance(this, 'Postgres', {
      engine: rds.DatabaseInstanceEngine.postgres({ version: rds.PostgresEngineVersion.VER_16 }),
      instanceType: ec2.InstanceType.of(ec2.InstanceClass.M7G, ec2.InstanceSize.LARGE),
      vpc,
      vpcSubnets: { subnetType: ec2.SubnetType.PRIVATE_ISOLATED },
      securityGroups: [dbSg],
      multiAz: true,
      databaseName: 'notify',
      credentials: rds.Credentials.fromGeneratedSecret('notify'),
      allocatedStorage: 100,
      storageType: rds.StorageType.GP3,
      storageEncrypted: true,
      backupRetention: Duration.days(7),
      deletionProtection: true,
      removalPolicy: RemovalPolicy.SNAPSHOT,
    });
    const proxy = db.addProxy('Proxy', {
      vpc,
      secrets: [db.secret!],
      securityGroups: [proxySg],
      // The services connect with sslmode=require, verified against the
      // system's roots (RDS Proxy's certificates chain to Amazon's roots).
      requireTLS: true,
      // Transaction-level multiplexing only works while nothing pins; a
      // borrow that waits longer than this fails and is retried by the caller.
      borrowTimeout: Duration.seconds(10),
      maxConnectionsPercent: 90,
    });

    // --- Cognito ----------------------------------------------------------
    const users = new cognito.UserPool(this, 'Users', {
      selfSignUpEnabled: false,
      signInAliases: { email: true, username: true },
      customAttributes: { realm: new cognito.StringAttribute({ mutable: true }) },
      removalPolicy: RemovalPolicy.RETAIN,
    });
    new cognito.CfnUserPoolGroup(this, 'AdminGroup', {
      userPoolId: users.userPoolId,
      groupName: 'admin',
      description: 'May follow any topic of the configured namespaces and publish from the Dev Panel',
    });
    const publish = new cognito.ResourceServerScope({ scopeName: 'publish', scopeDescription: 'Publish, Subscribe, EmitFightEvent' });
    const admin = new cognito.ResourceServerScope({ scopeName: 'admin', scopeDescription: 'GetPresence, Disconnect, History, Watch' });
    const bridgeScope = new cognito.ResourceServerScope({ scopeName: 'bridge', scopeDescription: 'Attach (bridges only)' });
    const api = users.addResourceServer('NotifyApi', {
      identifier: 'notify',
      scopes: [publish, admin, bridgeScope],
    });
    users.addDomain('Domain', { cognitoDomain: { domainPrefix: props.cognitoDomainPrefix } });
    const userClient = users.addClient('UserClient', {
      generateSecret: false,
      authFlows: { userSrp: true },
      accessTokenValidity: Duration.hours(1),
      idTokenValidity: Duration.hours(1),
      refreshTokenValidity: Duration.days(30),
      enableTokenRevocation: true,
      preventUserExistenceErrors: true,
    });
    const serviceClient = users.addClient('ServiceClient', {
      generateSecret: true,
      oAuth: {
        flows: { clientCredentials: true },
        scopes: [
          cognito.OAuthScope.resourceServer(api, publish),
          cognito.OAuthScope.resourceServer(api, admin),
        ],
      },
      accessTokenValidity: Duration.hours(1),
    });
    const jwks = `https://cognito-idp.${this.region}.amazonaws.com/${users.userPoolId}/.well-known/jwks.json`;
    const issuer = `https://cognito-idp.${this.region}.amazonaws.com/${users.userPoolId}`;

    // Static caller tokens of the bridges and the tracker (NOTIFY_API_TOKENS).
    const bridgeToken = new secrets.Secret(this, 'BridgeToken', {
      generateSecretString: { passwordLength: 40, excludePunctuation: true },
    });
    const trackerToken = new secrets.Secret(this, 'TrackerToken', {
      generateSecretString: { passwordLength: 40, excludePunctuation: true },
    });

    // --- ECS: notify-svc replicas and bridges ------------------------------
    const cluster = new ecs.Cluster(this, 'Cluster', {
      vpc,
      defaultCloudMapNamespace: { name: 'notify.internal', vpc },
      containerInsightsV2: ecs.ContainerInsights.ENABLED,
    });
    const image = ecs.ContainerImage.fromRegistry(props.image);
    const logGroup = new logs.LogGroup(this, 'Logs', { retention: logs.RetentionDays.ONE_MONTH });
    const databaseUrl =
      `postgres://$DB_USER:$DB_PASSWORD@${proxy.endpoint}:5432/notify?sslmode=require`;
    const dbSecrets = {
      DB_USER: ecs.Secret.fromSecretsManager(db.secret!, 'username'),
      DB_PASSWORD: ecs.Secret.fromSecretsManager(db.secret!, 'password'),
    };

    const internalNlb = new elbv2.NetworkLoadBalancer(this, 'NotifyApiNlb', {
      vpc,
      internetFacing: false,
      vpcSubnets: { subnetType: ec2.SubnetType.PRIVATE_WITH_EGRESS },
      crossZoneEnabled: true,
    });
    const apiListener = internalNlb.addListener('Grpc', { port: GRPC_PORT });
    const svcNames: string[] = [];
    const svcTargets: ecs.FargateService[] = [];
    for (let i = 0; i < svcReplicas; i++) {
      const name = `notify-svc-${String.fromCharCode(97 + i)}`;
      const task = new ecs.FargateTaskDefinition(this, `SvcTask${i}`, { cpu: 2048, memoryLimitMiB: 4096 });
      task.addContainer('notify-svc', {
        image,
        // The image has /bin/sh: DATABASE_URL and NOTIFY_API_TOKENS are put
        // together from the proxy endpoint and the generated secrets at start.
        entryPoint: ['/bin/sh', '-c'],
        command: [
          `DATABASE_URL="${databaseUrl}" ` +
            // Least privilege: bridges attach and read feeds; the tracker
            // publishes fight events only.
            'NOTIFY_API_TOKENS="bridge:bridge=$BRIDGE_TOKEN,tracker:publish@fight|fights=$TRACKER_TOKEN" exec notify-svc',
        ],
        environment: {
          NOTIFY_GRPC_ADDR: `0.0.0.0:${GRPC_PORT}`,
          NOTIFY_HTTP_ADDR: `0.0.0.0:${SVC_OPS_PORT}`,
          NOTIFY_AUTH_JWKS_URL: jwks,
          NOTIFY_AUTH_ISSUER: issuer,
          NOTIFY_AUTH_CLIENT_IDS: serviceClient.userPoolClientId,
          COGNITO_REGION: this.region,
          COGNITO_USER_POOL_ID: users.userPoolId,
          NOTIFY_LOG_FORMAT: 'json',
          RUST_LOG: 'info',
        },
        secrets: {
          ...dbSecrets,
          BRIDGE_TOKEN: ecs.Secret.fromSecretsManager(bridgeToken),
          TRACKER_TOKEN: ecs.Secret.fromSecretsManager(trackerToken),
        },
        portMappings: [{ containerPort: GRPC_PORT }, { containerPort: SVC_OPS_PORT }],
        logging: ecs.LogDrivers.awsLogs({ logGroup, streamPrefix: name }),
        stopTimeout: Duration.seconds(30),
      });
      const service = new ecs.FargateService(this, `Svc${i}`, {
        cluster,
        taskDefinition: task,
        desiredCount: 1,
        securityGroups: [servicesSg],
        vpcSubnets: { subnetType: ec2.SubnetType.PRIVATE_WITH_EGRESS },
        cloudMapOptions: { name, dnsRecordType: discovery.DnsRecordType.A, dnsTtl: Duration.seconds(10) },
        // One task per replica: replace it, never run two under one name.
        minHealthyPercent: 0,
        maxHealthyPercent: 100,
        circuitBreaker: { rollback: true },
      });
      svcNames.push(`http://${name}.notify.internal:${GRPC_PORT}`);
      svcTargets.push(service);
    }
    apiListener.addTargets('NotifySvc', {
      port: GRPC_PORT,
      targets: svcTargets,
      healthCheck: { protocol: elbv2.Protocol.HTTP, port: String(SVC_OPS_PORT), path: '/readyz' },
      deregistrationDelay: Duration.seconds(30),
    });
    servicesSg.addIngressRule(ec2.Peer.ipv4(vpc.vpcCidrBlock), ec2.Port.tcp(GRPC_PORT), 'producers via the internal NLB');
    servicesSg.addIngressRule(ec2.Peer.ipv4(vpc.vpcCidrBlock), ec2.Port.tcp(SVC_OPS_PORT), 'health checks, Prometheus');
    servicesSg.addIngressRule(ec2.Peer.ipv4(vpc.vpcCidrBlock), ec2.Port.tcp(BRIDGE_OPS_PORT), 'health checks, Prometheus');

    const bridgeTask = new ecs.FargateTaskDefinition(this, 'BridgeTask', { cpu: 2048, memoryLimitMiB: 4096 });
    bridgeTask.addContainer('bridge', {
      image,
      command: ['bridge'],
      environment: {
        BRIDGE_WS_ADDR: `0.0.0.0:${WS_PORT}`,
        BRIDGE_HTTP_ADDR: `0.0.0.0:${BRIDGE_OPS_PORT}`,
        BRIDGE_NOTIFY_URLS: svcNames.join(','),
        AUTH_JWKS_URL: jwks,
        AUTH_ISSUER: issuer,
        AUTH_CLIENT_IDS: userClient.userPoolClientId,
        BRIDGE_REVOCATION_CHECK: '1',
        COGNITO_REGION: this.region,
        COGNITO_USER_POOL_ID: users.userPoolId,
        BRIDGE_LOG_FORMAT: 'json',
        // The NLB terminates TLS and names the client in a PROXY v2 header.
        BRIDGE_PROXY_PROTOCOL: '1',
        RUST_LOG: 'info',
      },
      secrets: { BRIDGE_NOTIFY_TOKEN: ecs.Secret.fromSecretsManager(bridgeToken) },
      portMappings: [{ containerPort: WS_PORT }, { containerPort: BRIDGE_OPS_PORT }],
      logging: ecs.LogDrivers.awsLogs({ logGroup, streamPrefix: 'bridge' }),
      // SIGTERM closes sockets with 1012 and flushes acks within seconds.
      stopTimeout: Duration.seconds(30),
      ulimits: [{ name: ecs.UlimitName.NOFILE, softLimit: 1048576, hardLimit: 1048576 }],
    });
    const bridgeService = new ecs.FargateService(this, 'Bridges', {
      cluster,
      taskDefinition: bridgeTask,
      desiredCount: bridges,
      securityGroups: [servicesSg],
      vpcSubnets: { subnetType: ec2.SubnetType.PRIVATE_WITH_EGRESS },
      // Rolling: one bridge at a time leaves (1012), its clients reconnect to
      // the others and resume from their inbox.
      minHealthyPercent: 50,
      maxHealthyPercent: 200,
      circuitBreaker: { rollback: true },
    });
    const publicNlb = new elbv2.NetworkLoadBalancer(this, 'BridgeNlb', {
      vpc,
      internetFacing: true,
      crossZoneEnabled: true,
    });
    // wss: TLS ends at the balancer (ACM renews the certificate); its idle
    // timeout for TLS listeners is a fixed 350 s, above the 25 s ping.
    const wsListener = publicNlb.addListener('WebSocket', {
      port: 443,
      protocol: elbv2.Protocol.TLS,
      certificates: [elbv2.ListenerCertificate.fromArn(props.certificateArn)],
      sslPolicy: elbv2.SslPolicy.RECOMMENDED_TLS,
    });
    wsListener.addTargets('Bridges', {
      port: WS_PORT,
      protocol: elbv2.Protocol.TCP,
      targets: [bridgeService],
      healthCheck: { protocol: elbv2.Protocol.HTTP, port: String(BRIDGE_OPS_PORT), path: '/readyz' },
      // Longer than a bridge's drain: sockets close with 1012 before the target goes.
      deregistrationDelay: Duration.seconds(35),
      // The balancer's own connection reaches the bridge: the header names the client.
      proxyProtocolV2: true,
    });
    servicesSg.addIngressRule(ec2.Peer.ipv4(vpc.vpcCidrBlock), ec2.Port.tcp(WS_PORT), 'clients through the NLB (from its addresses)');

    // --- BetTracker on EC2 under systemd ------------------------------------
    const trackerRole = new iam.Role(this, 'TrackerRole', {
      assumedBy: new iam.ServicePrincipal('ec2.amazonaws.com'),
      managedPolicies: [iam.ManagedPolicy.fromAwsManagedPolicyName('AmazonSSMManagedInstanceCore')],
    });
    db.secret!.grantRead(trackerRole);
    trackerToken.grantRead(trackerRole);
    trackerRole.addToPolicy(new iam.PolicyStatement({
      actions: ['s3:GetObject'],
      resources: [props.trackerBinaryUrl.replace(/^s3:\/\//, 'arn:aws:s3:::')],
    }));
    const unit = fs.readFileSync(path.join(__dirname, '..', '..', '..', 'systemd', 'bet-tracker.service'), 'utf8');
    const userData = ec2.UserData.forLinux();
    userData.addCommands(
      'set -euo pipefail',
      `aws s3 cp ${props.trackerBinaryUrl} /usr/local/bin/bet-tracker`,
      'chmod 0755 /usr/local/bin/bet-tracker',
      'install -d -m 0750 /etc/notify',
      `SECRET=$(aws secretsmanager get-secret-value --region ${this.region} --secret-id ${db.secret!.secretArn} --query SecretString --output text)`,
      `TOKEN=$(aws secretsmanager get-secret-value --region ${this.region} --secret-id ${trackerToken.secretArn} --query SecretString --output text)`,
      'DB_USER=$(echo "$SECRET" | python3 -c "import json,sys; print(json.load(sys.stdin)[\'username\'])")',
      'DB_PASSWORD=$(echo "$SECRET" | python3 -c "import json,sys,urllib.parse; print(urllib.parse.quote(json.load(sys.stdin)[\'password\'], safe=\'\'))")',
      'umask 077',
      'cat > /etc/notify/bet-tracker.env <<ENV',
      `DATABASE_URL=postgres://$DB_USER:$DB_PASSWORD@${proxy.endpoint}:5432/notify?sslmode=require`,
      `TRACKER_NOTIFY_URL=http://${internalNlb.loadBalancerDnsName}:${GRPC_PORT}`,
      'TRACKER_NOTIFY_TOKEN=$TOKEN',
      'TRACKER_HTTP_ADDR=0.0.0.0:9466',
      'TRACKER_LOG_FORMAT=json',
      'RUST_LOG=info',
      'ENV',
      "cat > /etc/systemd/system/bet-tracker.service <<'UNIT'",
      unit.trimEnd(),
      'UNIT',
      'systemctl daemon-reload',
      'systemctl enable --now bet-tracker',
    );
    const tracker = new ec2.Instance(this, 'BetTracker', {
      vpc,
      vpcSubnets: { subnetType: ec2.SubnetType.PRIVATE_WITH_EGRESS },
      instanceType: ec2.InstanceType.of(ec2.InstanceClass.T3, ec2.InstanceSize.SMALL),
      machineImage: ec2.MachineImage.latestAmazonLinux2023(),
      role: trackerRole,
      securityGroup: servicesSg,
      userData,
      requireImdsv2: true,
    });

    new CfnOutput(this, 'WebSocketEndpoint', {
      value: `wss://${props.webSocketHost ?? publicNlb.loadBalancerDnsName}/ws`,
    });
    new CfnOutput(this, 'WebSocketBalancer', { value: publicNlb.loadBalancerDnsName });
    new CfnOutput(this, 'NotifyApiEndpoint', { value: `http://${internalNlb.loadBalancerDnsName}:${GRPC_PORT}` });
    new CfnOutput(this, 'UserPoolId', { value: users.userPoolId });
    new CfnOutput(this, 'UserClientId', { value: userClient.userPoolClientId });
    new CfnOutput(this, 'ServiceClientId', { value: serviceClient.userPoolClientId });
    new CfnOutput(this, 'ProxyEndpoint', { value: proxy.endpoint });
    new CfnOutput(this, 'TrackerInstance', { value: tracker.instanceId });
  }
}
