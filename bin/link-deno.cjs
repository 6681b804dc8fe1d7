#!/usr/bin/env node
// Runs as this repository's `prepare` script after `npm ci` / `npm install`: points
// node_modules/.bin/deno at bin/deno.cjs, the launcher that forwards signals and exits with
// deno's code. Deno's postinstall links the native binary there instead, which `deno task` then
// fails to run (it runs every node_modules/.bin entry as a script); npm's bin.cjs fallback
// swallows signals. Does nothing for a node_modules shared from elsewhere (a symlink) or when
// npm runs `prepare` for pack/publish.
'use strict';
const fs = require('node:fs');
const path = require('node:path');

const root = path.resolve(__dirname, '..');
const modules = path.join(root, 'node_modules');
const installing = ['ci', 'install', 'i', 'add', 'update'].includes(process.env.npm_command ?? '');
if (!installing || !fs.existsSync(modules) || fs.lstatSync(modules).isSymbolicLink() || process.platform === 'win32') process.exit(0);

const binDir = path.join(modules, '.bin');
const link = path.join(binDir, 'deno');
fs.mkdirSync(binDir, { recursive: true });
fs.rmSync(link, { force: true });
fs.symlinkSync(path.relative(binDir, path.join(__dirname, 'deno.cjs')), link);
fs.chmodSync(path.join(__dirname, 'deno.cjs'), 0o755);
