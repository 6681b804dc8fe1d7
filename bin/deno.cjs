#!/usr/bin/env node
// node_modules/.bin/deno, linked here by bin/link-deno.cjs on `npm ci` / `npm install`.
//
// npm's own launcher (node_modules/deno/bin.cjs) runs deno with spawnSync: while deno runs it
// cannot handle a signal, so SIGTERM to it (what `docker stop` and Kubernetes send) ends the
// launcher and leaves deno running as an orphan. This one waits asynchronously, forwards
// SIGINT/SIGTERM/SIGHUP to deno, and exits with deno's code. `deno task` runs it too, as a
// script under Deno, for the `deno` of each task: there it uses Deno's own process API (Deno's
// node:child_process reports a child that exited 0 after a forwarded signal as killed by it).
'use strict';

const SIGNALS = ['SIGINT', 'SIGTERM', 'SIGHUP'];
const args = process.argv.slice(2);

// A signal sent to the whole process group reaches deno directly too; the server counts a
// repeat that arrives within a second as the same request to stop.
if (typeof Deno !== 'undefined') {
  const child = new Deno.Command(Deno.execPath(), { args, stdin: 'inherit', stdout: 'inherit', stderr: 'inherit' }).spawn();
  for (const signal of SIGNALS) Deno.addSignalListener(signal, () => child.kill(signal));
  child.status.then((status) => Deno.exit(status.signal ? 128 + signalNumber(status.signal) : status.code));
} else {
  const { spawn } = require('node:child_process');
  // The native binary, found (and linked into node_modules/deno on first use) as npm's launcher does.
  const exe = require('deno/install_api.cjs').runInstall();
  const child = spawn(exe, args, { stdio: 'inherit' });
  for (const signal of SIGNALS) process.on(signal, () => child.kill(signal));
  child.on('error', (error) => {
    console.error(`cannot run ${exe}: ${error.message}`);
    process.exit(1);
  });
  child.on('exit', (code, signal) => process.exit(code ?? 128 + signalNumber(signal)));
}

function signalNumber(name) {
  return require('node:os').constants.signals[name] ?? 0;
}
