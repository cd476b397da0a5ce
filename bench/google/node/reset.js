#!/usr/bin/env node
// Benchmark contender: Google's Node client (googleapis) calling
// dataportability authorization.reset once per token.
//
//   node bench/google/node/reset.js --endpoint https://localhost:18443 \
//       --ca /path/ca.pem --count 500 [--concurrency C] [--auth oauth2|header]
//
// Prints one JSON line on stdout:
//   {"client":"googleapis-node","calls":N,"ok":K,"seconds":S,"setup_seconds":T,...}
// "seconds" is the wall time of the call loop only; "setup_seconds" is the time
// to load googleapis and build the client (Node's own start excluded).
//
// How it is written (what a competent user of googleapis would do):
//  * One API client, google.dataportability({version: 'v1', rootUrl, agent}),
//    built once. rootUrl points it at --endpoint.
//  * TLS trust: NODE_EXTRA_CA_CERTS is only read when Node starts, so instead
//    one https.Agent({ca, keepAlive: true}) is given in the client's options.
//    In googleapis 178 / gaxios 7 requests go through node-fetch v3, which
//    honours `agent` (gaxios passes a user-supplied agent through untouched;
//    gaxios 7 has no `httpsAgent` option). keepAlive lets calls reuse
//    connections; with --concurrency C up to C connections are open at once.
//  * Per token (default, --auth oauth2), the documented way: an OAuth2 client
//    per token, setCredentials({access_token}), passed as the call's `auth`.
//    With no refresh_token and no expiry_date the client never tries to
//    refresh, it only adds "Authorization: Bearer <token>". --auth header is
//    the shortcut some users take instead: no auth client, the header is put
//    in the call options ({headers: {Authorization}}), which skips building
//    an OAuth2Client and its transporter per call.
//  * The request body is empty (no requestBody), as in the API.
//  * Library defaults are kept (googleapis turns gaxios retries on; they only
//    act on failures, never on a 2xx).
//
// A non-2xx answer is counted as not ok and the run goes on; the exit status is
// then 1. A transport error (server down, TLS verification failure, ...) stops
// the run at once with a message on stderr and exit status 2.
'use strict';

const t0 = process.hrtime.bigint(); // before loading googleapis: setup starts here

const fs = require('fs');
const https = require('https');
const {createRequire} = require('module');
const {pathToFileURL} = require('url');

function usage(msg) {
  process.stderr.write(
    `reset.js: ${msg}\n` +
      'usage: node reset.js --endpoint https://HOST:PORT --ca CA.pem --count N ' +
      '[--concurrency C] [--auth oauth2|header]\n'
  );
  process.exit(2);
}

function die(code, msg) {
  process.stderr.write(`reset.js: ${msg}\n`);
  process.exit(code);
}

function parseArgs(argv) {
  const a = {endpoint: null, ca: null, count: null, concurrency: 1, auth: 'oauth2'};
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i];
    const v = argv[i + 1];
    const need = () => {
      if (v === undefined) usage(`${k} needs a value`);
      i++;
      return v;
    };
    switch (k) {
      case '--endpoint': a.endpoint = need(); break;
      case '--ca': a.ca = need(); break;
      case '--count': a.count = need(); break;
      case '--concurrency': a.concurrency = need(); break;
      case '--auth': a.auth = need(); break;
      case '-h':
      case '--help': usage('help');
      // falls through (usage exits)
      default: usage(`unknown argument ${k}`);
    }
  }
  if (!a.endpoint) usage('--endpoint is required');
  if (!/^https?:\/\//.test(a.endpoint)) usage('--endpoint must be an http(s) URL');
  if (!a.ca) usage('--ca is required');
  if (a.count === null) usage('--count is required');
  const int = (s, name) => {
    if (!/^[0-9]+$/.test(String(s)) || Number(s) < 1) usage(`${name} must be a positive integer`);
    return Number(s);
  };
  a.count = int(a.count, '--count');
  a.concurrency = int(a.concurrency, '--concurrency');
  if (a.auth !== 'oauth2' && a.auth !== 'header') usage('--auth must be oauth2 or header');
  return a;
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  let ca;
  try {
    ca = fs.readFileSync(args.ca);
  } catch (e) {
    usage(`cannot read CA file ${args.ca}: ${e.message}`);
  }

  let google;
  try {
    ({google} = require('googleapis'));
  } catch (e) {
    die(3, `cannot load googleapis (${e.message}): run bench/google/install`);
  }
  // gaxios imports node-fetch lazily on its first request; load it here (same
  // module instance) so that import counts as setup, not as the first call.
  const gaxiosRequire = createRequire(require.resolve('gaxios'));
  await import(pathToFileURL(gaxiosRequire.resolve('node-fetch')).href);

  const agent = new https.Agent({ca, keepAlive: true});
  const dataportability = google.dataportability({
    version: 'v1',
    rootUrl: args.endpoint.replace(/\/+$/, '') + '/',
    agent,
  });
  const authorization = dataportability.authorization;
  const OAuth2 = google.auth.OAuth2;
  const setupSeconds = Number(process.hrtime.bigint() - t0) / 1e9;

  const n = args.count;
  let ok = 0;
  const statuses = new Map();

  const callOne = async i => {
    const token = `bench-token-${i}`;
    try {
      if (args.auth === 'header') {
        await authorization.reset({}, {headers: {Authorization: `Bearer ${token}`}});
      } else {
        const auth = new OAuth2();
        auth.setCredentials({access_token: token});
        await authorization.reset({auth});
      }
      ok++;
    } catch (e) {
      const status = e && e.response && e.response.status;
      if (status) {
        statuses.set(status, (statuses.get(status) || 0) + 1);
        return;
      }
      const code = e && e.code ? ` [${e.code}]` : '';
      const cm = e && e.cause && e.cause.message;
      const cause = cm && cm !== e.message ? ` (${cm})` : '';
      die(2, `call ${i} of ${n} failed: ${e && e.name}${code}: ${e && e.message}${cause}`);
    }
  };

  const start = process.hrtime.bigint();
  if (args.concurrency === 1) {
    for (let i = 1; i <= n; i++) await callOne(i);
  } else {
    // A pool of C workers, each taking the next token until all N are done.
    let next = 1;
    const worker = async () => {
      while (next <= n) await callOne(next++);
    };
    await Promise.all(Array.from({length: Math.min(args.concurrency, n)}, worker));
  }
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  agent.destroy();

  process.stdout.write(
    JSON.stringify({
      client: 'googleapis-node',
      calls: n,
      ok,
      seconds: Math.round(seconds * 1e6) / 1e6,
      setup_seconds: Math.round(setupSeconds * 1e6) / 1e6,
      concurrency: args.concurrency,
      auth: args.auth,
      googleapis: require('googleapis/package.json').version,
    }) + '\n'
  );
  if (ok !== n) {
    const list = [...statuses].sort((x, y) => x[0] - y[0]).map(([s, c]) => `${s} x${c}`);
    process.exitCode = 1;
    process.stderr.write(`reset.js: ${n - ok} of ${n} calls were not 2xx (statuses: ${list.join(', ')})\n`);
  }
}

main().catch(e => die(2, `unexpected failure: ${(e && e.stack) || e}`));
