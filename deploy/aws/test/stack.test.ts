// Synthesizes the stack offline (CDK's own validation runs: a construct
// misused fails here) and checks the parts operators rely on.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

import { App } from 'aws-cdk-lib';
import { Match, Template } from 'aws-cdk-lib/assertions';

import { NotifyStack } from '../lib/notify-stack';

const CERTIFICATE = 'arn:aws:acm:eu-west-1:123456789012:certificate/test';

const template = (() => {
  const app = new App();
  const stack = new NotifyStack(app, 'Test', {
    env: { account: '123456789012', region: 'eu-west-1' },
    image: '123456789012.dkr.ecr.eu-west-1.amazonaws.com/notify:test',
    trackerBinaryUrl: 's3://artifacts/bet-tracker',
    cognitoDomainPrefix: 'notify-test',
    certificateArn: CERTIFICATE,
    webSocketHost: 'ws.example.com',
  });
  return Template.fromStack(stack);
})();

test('Postgres sits behind RDS Proxy, Multi-AZ', () => {
  template.hasResourceProperties('AWS::RDS::DBInstance', { Engine: 'postgres', MultiAZ: true });
  template.resourceCountIs('AWS::RDS::DBProxy', 1);
  template.hasResourceProperties('AWS::RDS::DBProxy', { EngineFamily: 'POSTGRESQL', RequireTLS: true });
});

test('Cognito has a user app client and an M2M client with the API scopes', () => {
  template.resourceCountIs('AWS::Cognito::UserPoolClient', 2);
  template.hasResourceProperties('AWS::Cognito::UserPoolClient', {
    GenerateSecret: true,
    AllowedOAuthFlows: ['client_credentials'],
    AllowedOAuthScopes: Match.arrayWith([
      Match.objectLike({ 'Fn::Join': Match.anyValue() }),
    ]),
  });
  template.hasResourceProperties('AWS::Cognito::UserPoolResourceServer', {
    Identifier: 'notify',
    Scopes: Match.arrayWith([Match.objectLike({ ScopeName: 'publish' })]),
  });
  template.hasResourceProperties('AWS::Cognito::UserPoolGroup', { GroupName: 'admin' });
});

test('the public NLB terminates TLS on 443 with the ACM certificate: no plain listener', () => {
  const listeners = Object.values(
    template.findResources('AWS::ElasticLoadBalancingV2::Listener', { Properties: { Port: 443 } }),
  ) as { Properties: { Protocol: string; SslPolicy?: string; Certificates?: { CertificateArn: string }[] } }[];
  assert.equal(listeners.length, 1, 'one 443 listener for the bridges');
  const [listener] = listeners;
  assert.equal(listener.Properties.Protocol, 'TLS');
  assert.deepEqual(listener.Properties.Certificates, [{ CertificateArn: CERTIFICATE }]);
  assert.match(listener.Properties.SslPolicy ?? '', /TLS13/, 'TLS 1.3 (with 1.2) only');
  // TLS listeners keep idle connections 350 s (fixed), above the 25 s ping.
  const plain = template.findResources('AWS::ElasticLoadBalancingV2::Listener', {
    Properties: { Protocol: 'TCP', Port: 443 },
  });
  assert.equal(Object.keys(plain).length, 0, 'nothing crosses the internet in clear');
  template.hasOutput('WebSocketEndpoint', { Value: 'wss://ws.example.com/ws' });
});

test('the bridges learn each client from the balancer\'s PROXY v2 header', () => {
  template.hasResourceProperties('AWS::ElasticLoadBalancingV2::TargetGroup', {
    Port: 8080,
    TargetGroupAttributes: Match.arrayWith([{ Key: 'proxy_protocol_v2.enabled', Value: 'true' }]),
  });
  const tasks = template.findResources('AWS::ECS::TaskDefinition');
  const bridge = Object.values(tasks)
    .flatMap((t: any) => t.Properties.ContainerDefinitions)
    .find((c: any) => c.Name === 'bridge');
  assert.deepEqual(
    bridge.Environment.find((e: any) => e.Name === 'BRIDGE_PROXY_PROTOCOL'),
    { Name: 'BRIDGE_PROXY_PROTOCOL', Value: '1' },
  );
});

test('each notify-svc replica has its own name; every bridge links to all of them', () => {
  template.resourceCountIs('AWS::ECS::Service', 3);
  const tasks = template.findResources('AWS::ECS::TaskDefinition');
  const bridge = Object.values(tasks)
    .flatMap((t: any) => t.Properties.ContainerDefinitions)
    .find((c: any) => c.Name === 'bridge');
  const urls = bridge.Environment.find((e: any) => e.Name === 'BRIDGE_NOTIFY_URLS').Value;
  assert.equal(
    urls,
    'http://notify-svc-a.notify.internal:50051,http://notify-svc-b.notify.internal:50051',
  );
});

test('every service reaches the proxy with sslmode=require', () => {
  const tasks = JSON.stringify(template.findResources('AWS::ECS::TaskDefinition'));
  const tracker = JSON.stringify(template.findResources('AWS::EC2::Instance'));
  assert.match(tasks, /sslmode=require/);
  assert.match(tracker, /sslmode=require/);
});

test('BetTracker runs on EC2 under the shipped systemd unit', () => {
  const instances = template.findResources('AWS::EC2::Instance');
  assert.equal(Object.keys(instances).length, 1);
  const userData = JSON.stringify(Object.values(instances)[0]);
  assert.match(userData, /systemctl enable --now bet-tracker/);
  assert.match(userData, /Type=notify/, 'the unit from deploy/systemd');
});

test('the app synthesizes with no validation warning', () => {
  const run = spawnSync(process.execPath, [path.join(__dirname, '..', 'bin', 'app.js')], {
    encoding: 'utf8',
    env: { ...process.env, CDK_OUTDIR: fs.mkdtempSync(path.join(os.tmpdir(), 'notify-cdk-')) },
  });
  const output = `${run.stdout}${run.stderr}`;
  assert.equal(run.status, 0, output);
  assert.doesNotMatch(output, /WARNING|ERROR/, output);
});
