// The bridge embeds the client's compiled modules for the Dev Panel
// (crates/bridge/panel/client/): they must be this source's build.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';

const root = path.resolve(import.meta.dirname, '..', '..');

test('the Dev Panel embeds the current build of the client (npm run panel)', () => {
  for (const file of ['index.js', 'client.js', 'backoff.js', 'protocol.js', 'value.js', 'push-worker.js']) {
    const built = fs.readFileSync(path.join(root, 'dist', file), 'utf8');
    const embedded = fs.readFileSync(path.join(root, '..', '..', 'crates', 'bridge', 'panel', 'client', file), 'utf8');
    assert.equal(embedded, built, `crates/bridge/panel/client/${file} is stale: run npm run panel in clients/ts`);
  }
});
