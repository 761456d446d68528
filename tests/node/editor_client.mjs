// Drives @jupyterlab/services, the client library of editors such as VS Code's
// Jupyter extension, against the mixer as against any Jupyter server (issue 13):
// base URL + token, the token appended to websocket URLs, no _xsrf cookie (there is
// no document in Node), the `ws` package as WebSocket and Node's global fetch.
//
//   MIXER_URL=http://127.0.0.1:PORT/ MIXER_TOKEN=… node editor_client.mjs
//
// Each step is checked here and logged to stderr; on success one JSON report goes to
// stdout (never the token) and the exit status is 0. Any failure exits 1, naming the
// step. Every wait is bounded. Run by tests/e2e/test_e2e_editor_client.py.

import assert from 'node:assert/strict';
import { format } from 'node:util';
import services from '@jupyterlab/services';
import WebSocket from 'ws';

const { KernelAPI, KernelManager, KernelSpecAPI, ServerConnection, SessionAPI, SessionManager } = services;

const BASE_URL = process.env.MIXER_URL;
const TOKEN = process.env.MIXER_TOKEN;
const STEP_TIMEOUT_MS = Number(process.env.STEP_TIMEOUT_MS || 60000);
const WHERE = "import os; print(os.environ.get('MIXER_TEST_WHERE'))";

// stdout carries the report only: the library's console output goes to stderr,
// and the token is never printed.
for (const method of ['log', 'debug', 'info', 'warn', 'error']) {
  console[method] = (...args) => {
    const text = format(...args);
    process.stderr.write((TOKEN ? text.split(TOKEN).join('[token]') : text) + '\n');
  };
}

const report = { steps: [], websockets: [], requests: [] };
let current = 'start';

function step(name) {
  current = name;
  report.steps.push(name);
  console.error(`[editor-client] ${name}`);
}

function withTimeout(promise, what, ms = STEP_TIMEOUT_MS) {
  let timer;
  const limit = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms);
  });
  return Promise.race([promise, limit]).finally(() => clearTimeout(timer));
}

// Records what the library does on the wire, without the token.
class RecordingWebSocket extends WebSocket {
  constructor(url, protocols) {
    super(url, protocols);
    const parsed = new URL(url);
    const entry = {
      path: parsed.pathname,
      tokenInQuery: parsed.searchParams.get('token') === TOKEN,
      offered: protocols || [],
      protocol: null
    };
    report.websockets.push(entry);
    this.on('open', () => {
      entry.protocol = this.protocol;
    });
  }
}

async function recordingFetch(request) {
  const headers = request.headers;
  const entry = {
    method: request.method,
    path: new URL(request.url).pathname,
    tokenHeader: headers.get('authorization') === `token ${TOKEN}`,
    cookie: headers.has('cookie'),
    xsrfHeader: headers.has('x-xsrftoken'),
    status: null // null: still waiting when the report was written (a poll)
  };
  report.requests.push(entry);
  try {
    const response = await fetch(request);
    entry.status = response.status;
    return response;
  } catch (error) {
    entry.error = String(error);
    throw error;
  }
}

// Runs code in the session's kernel; resolves with its stdout and the reply.
async function run(kernel, code) {
  const future = kernel.requestExecute({ code, store_history: false });
  let stdout = '';
  future.onIOPub = msg => {
    if (msg.header.msg_type === 'stream' && msg.content.name === 'stdout') {
      stdout += msg.content.text;
    }
  };
  const reply = await withTimeout(future.done, `execute ${JSON.stringify(code)}`);
  return { stdout: stdout.trim(), reply: reply.content };
}

async function waitConnected(kernel) {
  const deadline = Date.now() + STEP_TIMEOUT_MS;
  while (kernel.connectionStatus !== 'connected') {
    assert.ok(Date.now() < deadline, `kernel ${kernel.id} never connected`);
    await new Promise(resolve => setTimeout(resolve, 100));
  }
}

async function whereRuns(session) {
  await waitConnected(session.kernel);
  const { stdout, reply } = await run(session.kernel, WHERE);
  assert.equal(reply.status, 'ok', `execute failed: ${JSON.stringify(reply)}`);
  return stdout;
}

async function interruptSleep(kernel) {
  const future = kernel.requestExecute({ code: 'import time; time.sleep(60)' });
  const started = Date.now();
  await new Promise(resolve => setTimeout(resolve, 1000)); // let the sleep begin
  await withTimeout(kernel.interrupt(), 'interrupt');
  const reply = await withTimeout(future.done.catch(e => e), 'interrupted execute', 30000);
  const content = reply.content || {};
  assert.equal(content.status, 'error', `sleep not interrupted: ${JSON.stringify(content)}`);
  assert.equal(content.ename, 'KeyboardInterrupt');
  return Date.now() - started;
}

async function restartClearsState(session) {
  await run(session.kernel, 'editor_state = 41');
  const before = await run(session.kernel, "print('editor_state' in globals())");
  assert.equal(before.stdout, 'True');
  await withTimeout(session.kernel.restart(), 'restart');
  await waitConnected(session.kernel);
  const after = await run(session.kernel, "print('editor_state' in globals())");
  assert.equal(after.stdout, 'False', 'state survived the restart');
}

async function main() {
  assert.ok(BASE_URL && TOKEN, 'MIXER_URL and MIXER_TOKEN are required');
  const serverSettings = ServerConnection.makeSettings({
    baseUrl: BASE_URL,
    wsUrl: BASE_URL.replace(/^http/, 'ws'),
    token: TOKEN,
    appendToken: true,
    WebSocket: RecordingWebSocket,
    fetch: recordingFetch
  });

  step('list kernelspecs');
  const specs = await withTimeout(KernelSpecAPI.getSpecs(serverSettings), 'kernelspecs');
  report.kernelspecs = Object.keys(specs.kernelspecs).sort();
  report.defaultSpec = specs.default;
  for (const name of ['local-python3', 'remote-python3']) {
    assert.ok(name in specs.kernelspecs, `${name} not listed: ${report.kernelspecs}`);
  }

  const kernelManager = new KernelManager({ serverSettings });
  const sessionManager = new SessionManager({ kernelManager, serverSettings });
  await withTimeout(sessionManager.ready, 'session manager ready');

  step('start a notebook session on local-python3');
  const path = `editor-client-${Date.now()}.ipynb`;
  const session = await withTimeout(
    sessionManager.startNew({ path, name: path, type: 'notebook', kernel: { name: 'local-python3' } }),
    'start session'
  );
  report.sessionId = session.id;
  report.kernelIds = [session.kernel.id]; // every kernel the session ran on
  report.ranAt = { first: await whereRuns(session) };

  step('change the kernel to remote-python3');
  await withTimeout(session.changeKernel({ name: 'remote-python3' }), 'change to remote');
  assert.equal(session.id, report.sessionId, 'the session id changed');
  assert.equal(session.kernel.name, 'remote-python3');
  report.kernelIds.push(session.kernel.id);
  report.ranAt.afterChange = await whereRuns(session);
  const listed = await SessionAPI.getSessionModel(report.sessionId, serverSettings);
  report.listedKernelAfterChange = listed.kernel.name;

  step('interrupt time.sleep(60)');
  report.interruptMs = await interruptSleep(session.kernel);

  step('restart clears state');
  await restartClearsState(session);

  step('change back to local-python3');
  await withTimeout(session.changeKernel({ name: 'local-python3' }), 'change to local');
  assert.equal(session.id, report.sessionId, 'the session id changed');
  report.kernelIds.push(session.kernel.id);
  report.ranAt.afterChangeBack = await whereRuns(session);

  step('shut the session down');
  await withTimeout(session.shutdown(), 'shutdown');
  const running = await SessionAPI.listRunning(serverSettings);
  report.sessionListedAfterShutdown = running.some(s => s.id === report.sessionId);
  // the kernels listing, not the sessions one: a kernel left running without its
  // session is listed only there
  const kernels = await KernelAPI.listRunning(serverSettings);
  report.kernelsListedAfterShutdown = kernels.map(k => k.id).filter(id => report.kernelIds.includes(id));

  sessionManager.dispose();
  kernelManager.dispose();
  step('done');
}

const overall = setTimeout(() => {
  console.error(`[editor-client] FAILED at "${current}": overall time limit`);
  process.exit(1);
}, 8 * STEP_TIMEOUT_MS);

try {
  await main();
  clearTimeout(overall);
  process.stdout.write(JSON.stringify(report) + '\n');
  process.exit(0);
} catch (error) {
  console.error(`[editor-client] FAILED at "${current}": ${error && error.stack ? error.stack : error}`);
  process.stdout.write(JSON.stringify({ ...report, failedAt: current, error: String(error) }) + '\n');
  process.exit(1);
}
