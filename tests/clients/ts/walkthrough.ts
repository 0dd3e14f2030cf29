// The README walk-through with a client generated from bnaas' /openapi.json:
//   npm ci && BNAAS_URL=http://127.0.0.1:8000 npm run generate && npm run build
// (generate: openapi-typescript URL/openapi.json --default-non-nullable false -o api.d.ts, so
// that members with a default stay optional in request bodies)
//   node dist/walkthrough.js http://127.0.0.1:8000 [API_KEY]
// Every request and answer below is typed from the spec; `tsc --strict` checks them.
import createClient from "openapi-fetch";
import type { components, paths } from "./api.js";

type StatsExport = components["schemas"]["StatsExport"];

const baseUrl = process.argv[2] ?? "http://127.0.0.1:8000";
const apiKey = process.argv[3];
// Media: JSON answers are `data`, problem+json answers are `error`.
const client = createClient<paths, "application/json" | "application/problem+json">({
  baseUrl,
  headers: apiKey ? { Authorization: `Bearer ${apiKey}` } : {},
});

function check(cond: boolean, what: string): asserts cond {
  if (!cond) throw new Error(`walk-through: ${what}`);
}

function close(a: number | null | undefined, b: number, what: string): void {
  check(a != null && Math.abs(a - b) <= 1e-6 * Math.max(1, Math.abs(b)), `${what}: ${a} != ${b}`);
}

async function main(): Promise<void> {
  // Create a session with 3 features (PyTorch defaults: eps 1e-5, momentum 0.1).
  const created = await client.POST("/v1/sessions", { body: { num_features: 3 } });
  check(created.data !== undefined, `create: ${JSON.stringify(created.error)}`);
  const session = created.data;
  const params = { path: { session_id: session.id } };

  // Fit: train-mode output and batch statistics; the Idempotency-Key makes a retry safe.
  const batch = [
    [1, 2, 3],
    [4, 6, 5],
    [7, 9, 10],
  ];
  const fit = await client.POST("/v1/sessions/{session_id}/fit", {
    params: { ...params, header: { "Idempotency-Key": `${session.id}-batch-1` } },
    body: { data: batch },
  });
  check(fit.data !== undefined, `fit: ${JSON.stringify(fit.error)}`);
  check(fit.data.num_batches_tracked === 1, "one batch tracked");
  close(fit.data.batch.mean[0], 4, "batch mean");
  close(fit.data.batch.var[0], 6, "biased batch variance");
  check(fit.data.shape?.join() === "3,3", `output shape ${fit.data.shape}`);

  // Transform: inference mode with the running statistics; never changes the session.
  const transformed = await client.POST("/v1/sessions/{session_id}/transform", {
    params,
    body: { data: [[1, 2, 3]] },
  });
  check(transformed.data !== undefined, `transform: ${JSON.stringify(transformed.error)}`);
  check(transformed.data.dtype === "float32", "float32 answer");

  // Read the statistics: PyTorch names, eps, momentum and the exact population moments.
  const stats = await client.GET("/v1/sessions/{session_id}/stats", { params });
  check(stats.data !== undefined, `stats: ${JSON.stringify(stats.error)}`);
  check("running_mean" in stats.data, "JSON export has PyTorch names");
  const exported: StatsExport = stats.data;
  close(exported.running_mean?.[0], 0.4, "running_mean = 0.9 * 0 + 0.1 * 4");
  close(exported.running_var?.[0], 0.9 + 0.1 * 9, "running_var uses the unbiased variance");
  check(exported.population.count[0] === 3, "population count");

  // Errors are RFC 9457 problems, typed as such.
  const missing = await client.GET("/v1/sessions/{session_id}", {
    params: { path: { session_id: "no-such-session" } },
  });
  check(missing.response.status === 404, `missing session: ${missing.response.status}`);
  check(missing.error?.type === "urn:bnaas:problem:session-not-found", "problem type");

  const removed = await client.DELETE("/v1/sessions/{session_id}", { params });
  check(removed.response.status === 204, "delete");
  console.log(JSON.stringify({ ok: true, session: session.id, running_mean: exported.running_mean }));
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
