// Real Node clients against a running gateway: the official `openai` npm package and the
// Vercel AI SDK (`ai` with `@ai-sdk/openai`, whose default model speaks the Responses API,
// and `@ai-sdk/openai-compatible` for Chat Completions).
//
// Usage: node tests/node/clients.mjs http://127.0.0.1:PORT
// Prints one JSON line per check, {"name": ..., "ok": true|false, "detail": ...}, and exits
// 1 when any check failed (2 on bad usage). Run by tests/test_node_clients.py.

import { createOpenAI } from '@ai-sdk/openai';
import { createOpenAICompatible } from '@ai-sdk/openai-compatible';
import { generateText, streamText, tool } from 'ai';
import OpenAI from 'openai';
import { z } from 'zod';

const MODEL = 'qwen3:32b';
// Every request is bounded: a hung gateway fails a check, it does not hang the run.
const TIMEOUT_MS = 15_000;
const PROMPT = 'Say hello to the Node clients.';

const base = process.argv[2];
if (!base || !/^https?:\/\//.test(base)) {
  console.error('usage: node clients.mjs http://HOST:PORT');
  process.exit(2);
}
const baseURL = `${base.replace(/\/+$/, '')}/v1`;

const client = new OpenAI({ baseURL, apiKey: 'unused', maxRetries: 0, timeout: TIMEOUT_MS });
// The AI SDK's requests go through this fetch, so a check can tell which API a provider used.
let paths = [];
async function recordingFetch(input, init) {
  paths.push(new URL(input instanceof Request ? input.url : String(input)).pathname);
  return fetch(input, init);
}
const responsesProvider = createOpenAI({ baseURL, apiKey: 'unused', fetch: recordingFetch });
const chatProvider = createOpenAICompatible({
  name: 'clawproxy',
  baseURL,
  apiKey: 'unused',
  fetch: recordingFetch,
});

function check(condition, message) {
  if (!condition) throw new Error(message);
}

function nonEmptyText(text, what) {
  check(typeof text === 'string' && text.trim().length > 0, `${what}: empty text ${JSON.stringify(text)}`);
  return text;
}

function signal() {
  return AbortSignal.timeout(TIMEOUT_MS);
}

function usedOnly(path) {
  check(paths.length > 0 && paths.every((p) => p === path), `requests went to ${JSON.stringify(paths)}, not ${path}`);
}

function describe(error) {
  const parts = [];
  // openai's APIError and the AI SDK's APICallError both carry the status and the body.
  if (error?.status !== undefined) parts.push(`status ${error.status}`);
  if (error?.statusCode !== undefined) parts.push(`status ${error.statusCode}`);
  parts.push(`${error?.name ?? 'Error'}: ${error?.message ?? String(error)}`);
  if (error?.responseBody) parts.push(`body ${error.responseBody}`);
  if (error?.error && typeof error.error === 'object') parts.push(`error ${JSON.stringify(error.error)}`);
  if (error?.cause && error.cause !== error) parts.push(`cause ${describe(error.cause)}`);
  return parts.join('; ');
}

let failures = 0;

async function run(name, body) {
  let line;
  paths = [];
  try {
    const detail = await body();
    line = { name, ok: true, detail: detail ?? null };
  } catch (error) {
    failures += 1;
    line = { name, ok: false, detail: describe(error) };
  }
  console.log(JSON.stringify(line));
}

// --- the official openai package -------------------------------------------------------------

let chatText = null;

await run('openai.chat.create', async () => {
  const completion = await client.chat.completions.create(
    { model: MODEL, messages: [{ role: 'user', content: PROMPT }] },
    { signal: signal() },
  );
  check(completion.object === 'chat.completion', `object ${completion.object}`);
  check(completion.choices.length === 1, `${completion.choices.length} choices`);
  const choice = completion.choices[0];
  check(choice.message.role === 'assistant', `role ${choice.message.role}`);
  check(choice.finish_reason === 'stop', `finish_reason ${choice.finish_reason}`);
  chatText = nonEmptyText(choice.message.content, 'message.content');
  check(completion.usage?.completion_tokens > 0, `usage ${JSON.stringify(completion.usage)}`);
  return { chars: chatText.length, usage: completion.usage };
});

await run('openai.chat.stream', async () => {
  const stream = await client.chat.completions.create(
    {
      model: MODEL,
      messages: [{ role: 'user', content: PROMPT }],
      stream: true,
      stream_options: { include_usage: true },
    },
    { signal: signal() },
  );
  let text = '';
  let chunks = 0;
  let finish = null;
  let usage = null;
  for await (const chunk of stream) {
    check(chunk.object === 'chat.completion.chunk', `object ${chunk.object}`);
    chunks += 1;
    if (chunk.usage) usage = chunk.usage;
    for (const choice of chunk.choices) {
      text += choice.delta?.content ?? '';
      if (choice.finish_reason) finish = choice.finish_reason;
    }
  }
  nonEmptyText(text, 'assembled stream');
  check(chunks > 2, `only ${chunks} chunks`);
  check(finish === 'stop', `finish_reason ${finish}`);
  check(usage?.completion_tokens > 0, `usage ${JSON.stringify(usage)}`);
  if (chatText !== null) {
    check(text === chatText, `stream ${JSON.stringify(text)} != non-stream ${JSON.stringify(chatText)}`);
  }
  return { chunks, chars: text.length };
});

await run('openai.embeddings', async () => {
  // No encoding_format: the package asks for base64 and decodes it to numbers itself.
  const decoded = await client.embeddings.create(
    { model: MODEL, input: ['hello', 'world'] },
    { signal: signal() },
  );
  const floats = await client.embeddings.create(
    { model: MODEL, input: ['hello', 'world'], encoding_format: 'float' },
    { signal: signal() },
  );
  check(decoded.data.length === 2, `${decoded.data.length} embeddings`);
  const lengths = [];
  for (const [i, item] of decoded.data.entries()) {
    check(item.index === i, `index ${item.index} at ${i}`);
    const vector = item.embedding;
    check(Array.isArray(vector), `embedding ${i} is ${typeof vector}, not decoded to an array`);
    check(vector.length > 0, `embedding ${i} is empty`);
    check(vector.every(Number.isFinite), `embedding ${i} has a non-number`);
    const expected = floats.data[i].embedding;
    check(vector.length === expected.length, `length ${vector.length} != float ${expected.length}`);
    // base64 carries float32s: the same numbers as the float answer, to float32 precision.
    const worst = Math.max(...vector.map((v, k) => Math.abs(v - expected[k])));
    check(worst < 1e-6, `base64 and float vectors differ by ${worst}`);
    const norm = Math.sqrt(vector.reduce((sum, v) => sum + v * v, 0));
    check(Math.abs(norm - 1) < 1e-3, `norm ${norm}`);
    lengths.push(vector.length);
  }
  check(decoded.usage?.prompt_tokens > 0, `usage ${JSON.stringify(decoded.usage)}`);
  return { lengths };
});

await run('openai.models.list', async () => {
  const ids = [];
  for await (const model of client.models.list({ signal: signal() })) {
    check(model.object === 'model', `object ${model.object}`);
    ids.push(model.id);
  }
  check(ids.includes(MODEL), `${MODEL} not in ${JSON.stringify(ids)}`);
  return { ids };
});

await run('openai.models.retrieve', async () => {
  const model = await client.models.retrieve(MODEL, { signal: signal() });
  check(model.id === MODEL, `id ${model.id}`);
  check(model.object === 'model', `object ${model.object}`);
  check(typeof model.owned_by === 'string', `owned_by ${model.owned_by}`);
  return { id: model.id, owned_by: model.owned_by };
});

await run('openai.completions.create', async () => {
  const completion = await client.completions.create(
    { model: MODEL, prompt: PROMPT, max_tokens: 64 },
    { signal: signal() },
  );
  check(completion.object === 'text_completion', `object ${completion.object}`);
  check(completion.choices.length === 1, `${completion.choices.length} choices`);
  const text = nonEmptyText(completion.choices[0].text, 'choices[0].text');
  check(['stop', 'length'].includes(completion.choices[0].finish_reason), `finish_reason ${completion.choices[0].finish_reason}`);
  return { chars: text.length, finish_reason: completion.choices[0].finish_reason };
});

let responsesText = null;

await run('openai.responses.create', async () => {
  const response = await client.responses.create(
    { model: MODEL, input: PROMPT, store: false },
    { signal: signal() },
  );
  check(response.object === 'response', `object ${response.object}`);
  check(response.status === 'completed', `status ${response.status}`);
  // output_text is the package's own convenience getter over the output items.
  responsesText = nonEmptyText(response.output_text, 'output_text');
  check(response.usage?.output_tokens > 0, `usage ${JSON.stringify(response.usage)}`);
  return { chars: responsesText.length, usage: response.usage };
});

await run('openai.responses.stream', async () => {
  const stream = await client.responses.create(
    { model: MODEL, input: PROMPT, store: false, stream: true },
    { signal: signal() },
  );
  let text = '';
  const types = new Set();
  let completed = null;
  for await (const event of stream) {
    types.add(event.type);
    if (event.type === 'response.output_text.delta') text += event.delta;
    if (event.type === 'response.completed') completed = event.response;
  }
  for (const type of ['response.created', 'response.output_text.delta', 'response.completed']) {
    check(types.has(type), `no ${type} event in ${JSON.stringify([...types])}`);
  }
  nonEmptyText(text, 'assembled deltas');
  check(completed.status === 'completed', `status ${completed.status}`);
  const final = completed.output
    .filter((item) => item.type === 'message')
    .flatMap((item) => item.content)
    .filter((part) => part.type === 'output_text')
    .map((part) => part.text)
    .join('');
  check(final === text, `completed text ${JSON.stringify(final)} != deltas ${JSON.stringify(text)}`);
  if (responsesText !== null) {
    check(text === responsesText, `stream ${JSON.stringify(text)} != non-stream ${JSON.stringify(responsesText)}`);
  }
  return { chars: text.length, events: [...types] };
});

// --- the Vercel AI SDK -----------------------------------------------------------------------

async function generate(model) {
  const result = await generateText({
    model,
    prompt: PROMPT,
    maxRetries: 0,
    abortSignal: signal(),
  });
  nonEmptyText(result.text, 'result.text');
  check(result.finishReason === 'stop', `finishReason ${result.finishReason}`);
  check(result.usage.outputTokens > 0, `usage ${JSON.stringify(result.usage)}`);
  return result.text;
}

async function stream(model, expected) {
  let streamError = null;
  const result = streamText({
    model,
    prompt: PROMPT,
    maxRetries: 0,
    abortSignal: signal(),
    // Without this the SDK only logs a stream error; the check must see it.
    onError: ({ error }) => {
      streamError = error;
    },
  });
  let text = '';
  let parts = 0;
  for await (const delta of result.textStream) {
    text += delta;
    parts += 1;
  }
  if (streamError !== null) throw streamError;
  nonEmptyText(text, 'textStream');
  check(parts > 2, `only ${parts} text parts`);
  check((await result.finishReason) === 'stop', `finishReason ${await result.finishReason}`);
  check((await result.text) === text, 'result.text differs from the streamed parts');
  if (expected !== null) {
    check(text === expected, `stream ${JSON.stringify(text)} != generateText ${JSON.stringify(expected)}`);
  }
  return { parts, chars: text.length };
}

const weather = tool({
  description: 'The weather in a city.',
  inputSchema: z.object({ city: z.string().describe('The city name') }),
  execute: async ({ city }) => ({ city, forecast: 'sunny' }),
});

async function requiredTool(model) {
  const result = await generateText({
    model,
    prompt: 'What is the weather in Paris?',
    tools: { weather },
    toolChoice: 'required',
    maxRetries: 0,
    abortSignal: signal(),
  });
  check(result.toolCalls.length >= 1, `no tool call; text ${JSON.stringify(result.text)}`);
  const call = result.toolCalls[0];
  check(call.toolName === 'weather', `toolName ${call.toolName}`);
  check(typeof call.input?.city === 'string', `input ${JSON.stringify(call.input)}`);
  check(result.finishReason === 'tool-calls', `finishReason ${result.finishReason}`);
  check(result.toolResults.length === result.toolCalls.length, `toolResults ${JSON.stringify(result.toolResults)}`);
  return { input: call.input, calls: result.toolCalls.length };
}

const RESPONSES = '/v1/responses';
const CHAT = '/v1/chat/completions';

// The checks run one at a time, so `paths` holds the requests of the current check only.
async function via(path, body) {
  const detail = await body();
  usedOnly(path);
  return detail;
}

let aiResponsesText = null;
await run('ai-sdk.responses.generateText', () =>
  via(RESPONSES, async () => {
    aiResponsesText = await generate(responsesProvider(MODEL));
    return { chars: aiResponsesText.length };
  }),
);
await run('ai-sdk.responses.streamText', () =>
  via(RESPONSES, () => stream(responsesProvider(MODEL), aiResponsesText)),
);

let aiChatText = null;
await run('ai-sdk.chat.generateText', () =>
  via(CHAT, async () => {
    aiChatText = await generate(chatProvider(MODEL));
    return { chars: aiChatText.length };
  }),
);
await run('ai-sdk.chat.streamText', () => via(CHAT, () => stream(chatProvider(MODEL), aiChatText)));

// Forced tool calls: toolChoice 'required' sends tool_choice "required" on both APIs.
await run('ai-sdk.chat.tool-required', () => via(CHAT, () => requiredTool(chatProvider(MODEL))));
await run('ai-sdk.responses.tool-required', () =>
  via(RESPONSES, () => requiredTool(responsesProvider(MODEL))),
);

process.exit(failures === 0 ? 0 : 1);
