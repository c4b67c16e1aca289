// The CDK app: `npm run synth` writes the CloudFormation template to cdk.out/
// (no AWS account needed); `npx cdk deploy` with the aws-cdk CLI deploys it.
// Settings come from CDK context (-c key=value or cdk.json).
import { App } from 'aws-cdk-lib';

import { NotifyStack } from '../lib/notify-stack';

const app = new App();
const context = (key: string, fallback: string): string =>
  (app.node.tryGetContext(key) as string | undefined) ?? fallback;

new NotifyStack(app, 'Notify', {
  env: {
    account: process.env.CDK_DEFAULT_ACCOUNT,
    region: process.env.CDK_DEFAULT_REGION ?? context('region', 'eu-west-1'),
  },
  image: context('image', '123456789012.dkr.ecr.eu-west-1.amazonaws.com/notify:latest'),
  trackerBinaryUrl: context('trackerBinaryUrl', 's3://notify-artifacts-example/bet-tracker'),
  cognitoDomainPrefix: context('cognitoDomainPrefix', 'notify-example'),
  certificateArn: context(
    'certificateArn',
    'arn:aws:acm:eu-west-1:123456789012:certificate/00000000-0000-0000-0000-000000000000',
  ),
  webSocketHost: context('webSocketHost', 'ws.notify.example.com'),
  svcReplicas: Number(context('svcReplicas', '2')),
  bridges: Number(context('bridges', '2')),
});
app.synth();
