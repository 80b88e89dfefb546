#!/usr/bin/env node
// Run a program through the Sandmesh gateway from Node.js, the way `sandmesh run` does in Python:
// SubmitExecution, then follow WatchExecution and print the output as it comes, then read what
// the stream did not carry with ReadOutput, then exit with the program's exit code.
//
//   node run.js --gateway 127.0.0.1:50051 --api-key KEY hello.py [ARGS...]
//
// The contracts are loaded at run time straight from the repository's protos/ directory
// (override with SANDMESH_PROTOS); nothing is generated. See README.md.
'use strict';

const fs = require('node:fs');
const path = require('node:path');
const { parseArgs } = require('node:util');

const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTOS = process.env.SANDMESH_PROTOS || path.resolve(__dirname, '..', '..', 'protos');
const GATEWAY_PROTO = 'sandmesh/gateway/v1/gateway.proto';
const DEFAULT_GATEWAY = '127.0.0.1:50051';
const DEFAULT_TIMEOUT_S = 120;

// Language id (services/executor/languages.toml) by file suffix.
const LANGUAGE_BY_SUFFIX = {
  '.py': 'python3',
  '.js': 'javascript',
  '.c': 'c',
  '.cpp': 'cpp',
  '.go': 'go',
  '.java': 'java',
  '.php': 'php',
  '.rb': 'ruby',
};

// Exit codes of this script when the program did not give one.
const EXIT_CALL_FAILED = 2; // the gateway refused the call, or the stream broke
const EXIT_NO_CODE = 1; // the program ended without an exit code (signal, time or memory limit)

const USAGE = `usage: node run.js [--gateway HOST:PORT] [--api-key KEY] [--language ID]
                   [--stdin FILE] [--timeout SECONDS] [--limit NAME=VALUE]... FILE [ARGS...]

  --gateway   gateway address (default: $SANDMESH_GATEWAY or ${DEFAULT_GATEWAY})
  --api-key   API key, sent as "authorization: Bearer KEY" (default: $SANDMESH_API_KEY)
  --language  language id (default: from the file suffix: ${Object.keys(LANGUAGE_BY_SUFFIX).join(' ')})
  --stdin     file whose bytes are the program's standard input
  --timeout   deadline of the whole run in seconds (default: ${DEFAULT_TIMEOUT_S})
  --limit     a limit of the run as NAME=VALUE, e.g. output_bytes=8388608 (repeatable)`;

function fail(message, code = EXIT_CALL_FAILED) {
  process.stderr.write(`sandmesh: ${message}\n`);
  process.exit(code);
}

function parseCommandLine(argv) {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      strict: true,
      options: {
        gateway: { type: 'string' },
        'api-key': { type: 'string' },
        language: { type: 'string' },
        stdin: { type: 'string' },
        timeout: { type: 'string' },
        limit: { type: 'string', multiple: true },
        help: { type: 'boolean', short: 'h' },
      },
    });
  } catch (error) {
    fail(`${error.message}\n${USAGE}`);
  }
  const { values, positionals } = parsed;
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    process.exit(0);
  }
  if (positionals.length === 0) fail(`no program file given\n${USAGE}`);
  const timeout = values.timeout === undefined ? DEFAULT_TIMEOUT_S : Number(values.timeout);
  if (!Number.isFinite(timeout) || timeout <= 0) fail(`--timeout must be a positive number of seconds`);
  return {
    gateway: values.gateway || process.env.SANDMESH_GATEWAY || DEFAULT_GATEWAY,
    apiKey: values['api-key'] || process.env.SANDMESH_API_KEY || '',
    language: values.language,
    stdin: values.stdin,
    timeout,
    limits: parseLimits(values.limit || []),
    file: positionals[0],
    args: positionals.slice(1),
  };
}

// `--limit NAME=VALUE` options as a Limits message; the gateway checks the values' bounds.
function parseLimits(pairs) {
  const limits = {};
  for (const pair of pairs) {
    const match = /^([a-z_]+)=(\d+)$/.exec(pair);
    if (!match) fail(`--limit takes NAME=VALUE (e.g. output_bytes=8388608), got ${pair}`);
    limits[match[1]] = Number(match[2]);
  }
  return limits;
}

function readOrFail(file, encoding) {
  try {
    return fs.readFileSync(file, encoding);
  } catch (error) {
    return fail(`cannot read ${file}: ${error.message}`);
  }
}

function executionRequest(options) {
  const language = options.language || LANGUAGE_BY_SUFFIX[path.extname(options.file)];
  if (!language) fail(`cannot tell the language of ${options.file}; pass --language`);
  return {
    language,
    source: readOrFail(options.file, 'utf8'),
    stdin: options.stdin ? readOrFail(options.stdin) : Buffer.alloc(0),
    args: options.args,
    limits: options.limits,
  };
}

function gatewayClient(target) {
  const definition = protoLoader.loadSync(GATEWAY_PROTO, {
    includeDirs: [PROTOS], // google/protobuf/*.proto come bundled with protobufjs
    keepCase: true, // field names as in the .proto: execution_id, exit_code
    longs: String,
    enums: String, // 'OUTPUT_STREAM_STDERR', 'EXECUTION_STATUS_COMPLETED'
    defaults: true,
    oneofs: true, // event.kind names the set member; optional fields get '_name'
  });
  const { GatewayService } = grpc.loadPackageDefinition(definition).sandmesh.gateway.v1;
  return new GatewayService(target, grpc.credentials.createInsecure());
}

function callError(error) {
  const code = grpc.status[error.code] || String(error.code);
  return `${code}: ${error.details || error.message}`;
}

function submit(client, request, metadata, deadline) {
  return new Promise((resolve, reject) => {
    client.SubmitExecution({ request }, metadata, { deadline }, (error, response) =>
      error ? reject(error) : resolve(response.execution),
    );
  });
}

const STREAMS = ['OUTPUT_STREAM_STDOUT', 'OUTPUT_STREAM_STDERR'];

function outFor(stream) {
  return stream === 'OUTPUT_STREAM_STDERR' ? process.stderr : process.stdout;
}

// Follows the execution's events to its result, writing each output chunk as it arrives.
// `written` counts the bytes of each stream written so far; a chunk that would leave a gap
// (an event was lost) stops the live output of its stream, and the rest is read afterwards.
// Resolves with the ExecutionResult; rejects with the call's error.
function watch(client, executionId, metadata, deadline, written) {
  const gapped = new Set();
  return new Promise((resolve, reject) => {
    let result = null;
    const call = client.WatchExecution({ execution_id: executionId }, metadata, { deadline });
    call.on('data', ({ event }) => {
      if (!event || result) return;
      if (event.kind === 'output') {
        const { stream, data } = event.output;
        const offset = Number(event.output.offset);
        if (!(stream in written) || gapped.has(stream)) return;
        if (offset > written[stream]) {
          gapped.add(stream);
          return;
        }
        const fresh = data.subarray(written[stream] - offset);
        outFor(stream).write(fresh);
        written[stream] += fresh.length;
      } else if (event.kind === 'result') {
        result = event.result;
        resolve(result);
        call.cancel(); // the stream ends after the result anyway; do not wait for it
      }
    });
    call.on('error', (error) => {
      if (!result) reject(error);
    });
    call.on('end', () => {
      if (!result) reject(new Error(`the watch of ${executionId} ended without a result`));
    });
  });
}

// Reads `stream` of a finished execution from `offset` to its end with ReadOutput, writing
// each chunk (at most 256 KiB: the result itself never carries more than a small inline cap).
function readOutput(client, executionId, stream, offset, metadata, deadline) {
  return new Promise((resolve, reject) => {
    const call = client.ReadOutput({ execution_id: executionId, stream, offset }, metadata, {
      deadline,
    });
    call.on('data', ({ data }) => outFor(stream).write(data));
    call.on('error', reject);
    call.on('end', resolve);
  });
}

// Live output events are best effort and the result carries only the first bytes inline:
// write whatever was not written yet, from the inline bytes and then from ReadOutput, so the
// whole output arrives byte for byte, nothing twice.
async function writeMissedOutput(client, executionId, result, written, metadata, deadline) {
  const parts = {
    OUTPUT_STREAM_STDOUT: [result.stdout, Number(result.stdout_size)],
    OUTPUT_STREAM_STDERR: [result.stderr, Number(result.stderr_size)],
  };
  for (const stream of STREAMS) {
    const [inline, recorded] = parts[stream];
    const size = Math.max(recorded, inline.length);
    if (written[stream] < inline.length) {
      outFor(stream).write(inline.subarray(written[stream]));
      written[stream] = inline.length;
    }
    if (written[stream] < size) {
      await readOutput(client, executionId, stream, written[stream], metadata, deadline);
    }
  }
}

async function main() {
  const options = parseCommandLine(process.argv.slice(2));
  const request = executionRequest(options);
  const client = gatewayClient(options.gateway);
  const metadata = new grpc.Metadata();
  if (options.apiKey) metadata.set('authorization', `Bearer ${options.apiKey}`);
  // One deadline for the whole run: the mesh never works past it.
  const deadline = new Date(Date.now() + options.timeout * 1000);

  let result;
  try {
    const execution = await submit(client, request, metadata, deadline);
    const written = { OUTPUT_STREAM_STDOUT: 0, OUTPUT_STREAM_STDERR: 0 };
    result = await watch(client, execution.id, metadata, deadline, written);
    await writeMissedOutput(client, execution.id, result, written, metadata, deadline);
  } catch (error) {
    client.close();
    process.stderr.write(`sandmesh: ${error.code === undefined ? error.message : callError(error)}\n`);
    process.exitCode = EXIT_CALL_FAILED;
    return;
  }
  client.close();

  const status = String(result.status).replace(/^EXECUTION_STATUS_/, '');
  if (status !== 'COMPLETED') {
    process.stderr.write(`sandmesh: ${status}: ${result.detail}\n`);
  }
  // exit_code is proto3 `optional`: unset (killed by a signal) means no '_exit_code' member.
  const hasExitCode = result._exit_code === 'exit_code';
  // exitCode rather than process.exit(): let piped stdout and stderr drain first.
  process.exitCode = hasExitCode ? result.exit_code : EXIT_NO_CODE;
}

main();
