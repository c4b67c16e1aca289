// The real platform for the integration and browser tests: `notify up`
// (and, where a test must kill the bridge alone, a `bridge` process of its
// own attached to it), on free loopback ports, with the workspace's
// binaries (NOTIFY_BIN_DIR, default ../../target/debug).
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';

export const binDir =
  process.env.NOTIFY_BIN_DIR ?? path.resolve(import.meta.dirname, '..', '..', '..', '..', 'target', 'debug');

export function binary(name: string): string {
  const file = path.join(binDir, name);
  if (!fs.existsSync(file)) {
    throw new Error(`${file} is missing: build the workspace first (cargo build --bins; scripts/test does)`);
  }
  return file;
}

export async function freePort(): Promise<number> {
  return await new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

export async function eventually<T>(what: string, within: number, check: () => T | undefined | Promise<T | undefined>): Promise<T> {
  const deadline = Date.now() + within;
  for (;;) {
    const value = await check();
    if (value !== undefined && value !== false) {
      return value;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${within} ms waiting for ${what}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** The environment minus DATABASE_URL (`notify up` then keeps its SQLite file). */
function withoutDatabaseUrl(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, RUST_LOG: 'warn' };
  delete env.DATABASE_URL;
  return env;
}

/** `notify up` on a data directory of its own. */
/** Sends `signal` to a running child and waits for its exit. */
async function signalAndWait(child: ChildProcess | null, signal: NodeJS.Signals): Promise<void> {
  if (!child || child.exitCode !== null) {
    return;
  }
  const exited = new Promise((r) => child.once('exit', r));
  child.kill(signal);
  await exited;
}

export class Up {
  readonly dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'notify-ts-'));
  grpc = '';
  ws = '';
  /** What `notify up` printed at its last start. */
  banner = '';
  private child: ChildProcess | null = null;

  constructor(private readonly extraArgs: string[] = []) {}

  async start(): Promise<void> {
    if (!this.grpc) {
      this.grpc = `127.0.0.1:${await freePort()}`;
      this.ws = `127.0.0.1:${await freePort()}`;
    }
    const http = `127.0.0.1:${await freePort()}`;
    const bridgeHttp = `127.0.0.1:${await freePort()}`;
    const child = spawn(
      binary('notify'),
      [
        'up',
        '--grpc-addr',
        this.grpc,
        '--http-addr',
        http,
        '--ws-addr',
        this.ws,
        '--bridge-http-addr',
        bridgeHttp,
        '--data-dir',
        this.dataDir,
        ...this.extraArgs,
      ],
      { env: withoutDatabaseUrl(), stdio: ['ignore', 'pipe', 'inherit'] },
    );
    this.child = child;
    let banner = '';
    await new Promise<void>((resolve, reject) => {
      child.stdout!.on('data', (chunk: Buffer) => {
        banner += chunk.toString();
        if (banner.includes('Ctrl-C')) {
          this.banner = banner;
          resolve();
        }
      });
      child.once('exit', (code) => reject(new Error(`notify up exited (${code}): ${banner}`)));
    });
  }

  /** The one-click Dev Panel link of the banner. */
  get panelUrl(): string {
    const url = /Dev Panel\s+(\S+)/.exec(this.banner)?.[1];
    if (!url) {
      throw new Error(`no Dev Panel link in the banner:\n${this.banner}`);
    }
    return url;
  }

  /** SIGTERM and wait for the exit. */
  async stop(): Promise<void> {
    const child = this.child;
    this.child = null;
    await signalAndWait(child, 'SIGTERM');
  }

  /** A dev token for `user` (`notify token`). */
  token(user: string, groups: string[] = []): string {
    const args = ['token', '--user', user, '--data-dir', this.dataDir];
    if (groups.length) {
      args.push('--groups', groups.join(','));
    }
    const out = spawnSync(binary('notify'), args, { encoding: 'utf8' });
    if (out.status !== 0) {
      throw new Error(`notify token: ${out.stderr}`);
    }
    return out.stdout.trim();
  }

  /** `notify publish` to a user; the answer's JSON. */
  publish(user: string, data: unknown, event = 'note'): { message_id: string; seq: number } {
    const out = spawnSync(
      binary('notify'),
      ['publish', '--url', `http://${this.grpc}`, '--user', user, '--event', event, '--data', JSON.stringify(data)],
      { encoding: 'utf8' },
    );
    if (out.status !== 0) {
      throw new Error(`notify publish: ${out.stderr}`);
    }
    return JSON.parse(out.stdout) as { message_id: string; seq: number };
  }

  cleanup(): void {
    fs.rmSync(this.dataDir, { recursive: true, force: true });
  }
}

/** `notify echo-backend` on a free port: a backend for routed actions. */
export class EchoBackend {
  addr = '';
  private child: ChildProcess | null = null;

  async start(): Promise<void> {
    const child = spawn(binary('notify'), ['echo-backend', '--addr', '127.0.0.1:0'], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    this.child = child;
    let out = '';
    this.addr = await new Promise<string>((resolve, reject) => {
      child.stdout!.on('data', (chunk: Buffer) => {
        out += chunk.toString();
        const line = out.split('\n').find((l) => l.includes('serving'));
        if (line) resolve((JSON.parse(line) as { serving: string }).serving);
      });
      child.once('exit', (code) => reject(new Error(`notify echo-backend exited (${code}): ${out}`)));
    });
  }

  async stop(): Promise<void> {
    const child = this.child;
    this.child = null;
    await signalAndWait(child, 'SIGKILL');
  }
}

/** A bridge process of its own, attached to `up`'s notify-svc, trusting its dev key. */
export class Bridge {
  ws = '';
  ops = '';
  private child: ChildProcess | null = null;

  /** `env`: more of the bridge's settings (BRIDGE_ROUTES, …). */
  constructor(
    private readonly up: Up,
    private readonly env: Record<string, string> = {},
  ) {}

  async start(): Promise<void> {
    if (!this.ws) {
      this.ws = `127.0.0.1:${await freePort()}`;
      this.ops = `127.0.0.1:${await freePort()}`;
    }
    this.child = spawn(binary('bridge'), [], {
      env: {
        ...process.env,
        RUST_LOG: 'warn',
        BRIDGE_WS_ADDR: this.ws,
        BRIDGE_HTTP_ADDR: this.ops,
        BRIDGE_NOTIFY_URLS: `http://${this.up.grpc}`,
        BRIDGE_DATA_DIR: this.up.dataDir,
        BRIDGE_ID: 'panel-bridge',
        // Off by default outside `notify up`: this bridge serves the panel.
        BRIDGE_PANEL: '1',
        AUTH_DEV: '1',
        ...this.env,
      },
      stdio: ['ignore', 'ignore', 'inherit'],
    });
    await eventually('the bridge ready', 30_000, async () => {
      try {
        const r = await fetch(`http://${this.ops}/readyz`);
        return r.ok || undefined;
      } catch {
        return undefined;
      }
    });
  }

  async kill9(): Promise<void> {
    const child = this.child;
    this.child = null;
    await signalAndWait(child, 'SIGKILL');
  }
}
