// Thresholds: each script's pass/fail contract. k6 exits 99 when one fails.
import { MIX_WEIGHTS } from './requests.js';

/** No request failed (a status outside the expected ones, a timeout, a refused connection). */
export const NO_FAILED_REQUESTS = { http_req_failed: ['rate==0'] };

/** Every check passed. */
export const ALL_CHECKS_PASS = { checks: ['rate==1'] };

/** Every check of each kind passed: one line per kind in the summary, so a broken kind shows. */
export function everyKindPasses(kinds) {
  return Object.fromEntries(kinds.map((kind) => [`checks{kind:${kind}}`, ['rate==1']]));
}

/** The reference ramp's latency target: p95 <= 20 ms, p99 <= 100 ms. */
export const REFERENCE_LATENCY = { http_req_duration: ['p(95)<20', 'p(99)<100'] };

/** The realistic mix's latency target (its Postgres-served unknown ids included). */
export const MIX_LATENCY = { http_req_duration: ['p(95)<100', 'p(99)<250'] };

/**
 * The realistic mix's contract (mix.js, soak.js): no failed request (with expectMixAnswers(),
 * 400/404 are expected answers), every check of every kind passes, the reference latency holds.
 */
export const MIX_THRESHOLDS = {
  ...NO_FAILED_REQUESTS,
  ...MIX_LATENCY,
  ...ALL_CHECKS_PASS,
  ...everyKindPasses(Object.keys(MIX_WEIGHTS)),
};

/** The spike's latency target (p99 <= 100 ms). */
export const SPIKE_LATENCY = { http_req_duration: ['p(99)<100'] };

/** Smoke: no load to speak of, so only a bound that catches something badly wrong. */
export const SMOKE_LATENCY = { http_req_duration: ['p(99)<1000'] };

/**
 * Breakpoint: the first of these to fail stops the run (abortOnFail); the rate reached by then is
 * the breakpoint. delayAbortEval lets the first seconds' few samples settle before judging.
 */
export const BREAKPOINT_ABORT = {
  http_req_failed: [{ threshold: 'rate<0.01', abortOnFail: true, delayAbortEval: '10s' }],
  http_req_duration: [{ threshold: 'p(95)<250', abortOnFail: true, delayAbortEval: '10s' }],
};
