// The realistic mix: mostly students (results day), some bookings, and the mistakes real users
// make (unknown ids, mistyped ids), each kind tagged `kind:<kind>` with its own checks:
// records must come back 200 JSON with the id asked for, mistakes as problem+json 404 / 400.
// Contract: no failed request (400/404 are expected answers here), every check of every kind
// passes, the reference latency holds.
//
//   make k6-mix
//   MIX_VUS, MIX_HOLD                   1000, 2m
//   STAGES="10s:200,30s:200,5s:0"       stages of your own
import { COMMON_OPTIONS, mixShape } from './lib/load-options.js';
import { expectMixAnswers, mixIteration } from './lib/requests.js';
import { setupMix } from './lib/setup.js';
import { MIX_THRESHOLDS } from './lib/thresholds.js';

export const options = {
  thresholds: MIX_THRESHOLDS,
  scenarios: { mix: mixShape() },
  ...COMMON_OPTIONS,
};

expectMixAnswers();

export const setup = setupMix;
export default mixIteration;
