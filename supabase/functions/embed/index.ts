// suparag's `embed` as a Supabase Edge Function, for an embedding space whose model is
// gte-small (issue 18): Supabase's built-in model, so queries need no Python service.
//
// Same contract as `suparag serve`'s POST /functions/v1/embed:
//   {"input": "text"}        -> {"embedding": [...384 floats], "model": "gte-small"}
//   {"input": ["a", "b"]}    -> {"embeddings": [[...], [...]], "model": "gte-small"}
// Mean pooled and normalized, as Supabase's documented example
// (https://supabase.com/docs/guides/functions/ai-models), so cosine distance in
// match_documents is the similarity. Deploy with `supabase functions deploy embed`
// (verify_jwt stays on: callers send the anon key or a user's token).
// See docs/edge-functions.md for what was and was not measured.

const session = new Supabase.ai.Session("gte-small");

// The limits of suparag serve (worker/edge/limits.py), so both refuse the same inputs.
const MAX_INPUTS = 256;
const MAX_TEXT_BYTES = 16 * 1024;

const corsHeaders = {
  "Access-Control-Allow-Origin": "*",
  "Access-Control-Allow-Headers": "authorization, x-client-info, apikey, content-type",
  "Access-Control-Allow-Methods": "POST, OPTIONS",
};

function reply(body: unknown, status = 200): Response {
  return new Response(JSON.stringify(body), {
    status,
    headers: { ...corsHeaders, "Content-Type": "application/json" },
  });
}

function badRequest(message: string, status = 400): Response {
  return reply({
    code: status === 413 ? "request_too_large" : "bad_request",
    message,
    details: null,
    hint: 'Send {"input": "text"} or {"input": ["text", ...]}.',
  }, status);
}

Deno.serve(async (req: Request) => {
  if (req.method === "OPTIONS") return new Response("ok", { headers: corsHeaders });
  if (req.method !== "POST") return badRequest("POST a JSON body", 405);
  let body: { input?: unknown };
  try {
    body = await req.json();
  } catch {
    return badRequest("Could not parse the request body as JSON");
  }
  const single = typeof body?.input === "string";
  const texts = single ? [body.input] : body?.input;
  if (!Array.isArray(texts) || texts.length === 0 ||
      !texts.every((t) => typeof t === "string" && t.trim() !== "")) {
    return badRequest("`input` must be a non-empty string or a non-empty list of non-empty strings");
  }
  if (texts.length > MAX_INPUTS) return badRequest(`at most ${MAX_INPUTS} texts per call`);
  const encoder = new TextEncoder();
  for (const [i, text] of (texts as string[]).entries()) {
    const size = encoder.encode(text).length;
    if (size > MAX_TEXT_BYTES) {
      return badRequest(`text ${i} is ${size} bytes; at most ${MAX_TEXT_BYTES} bytes per text`, 413);
    }
  }
  const embeddings: number[][] = [];
  for (const text of texts as string[]) {
    embeddings.push(await session.run(text, { mean_pool: true, normalize: true }) as number[]);
  }
  return single
    ? reply({ embedding: embeddings[0], model: "gte-small" })
    : reply({ embeddings, model: "gte-small" });
});
