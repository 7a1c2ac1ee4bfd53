// Soak: the realistic mix (see mix.js) at half the reference load for a long time: does anything
// leak, drift or pile up (pools, memory, the negative cache)? Watch Grafana while it runs.
// Contract: no failed request, every check passes, the reference latency holds throughout.
//
//   make k6-soak
//   SOAK_VUS, SOAK_DURATION             1500, 10m
import { COMMON_OPTIONS, soakShape } from './lib/load-options.js';
import { expectMixAnswers, mixIteration } from './lib/requests.js';
import { setupMix } from './lib/setup.js';
import { MIX_THRESHOLDS } from './lib/thresholds.js';

export const options = {
  thresholds: MIX_THRESHOLDS,
  scenarios: { soak: soakShape() },
  ...COMMON_OPTIONS,
};

expectMixAnswers();

export const setup = setupMix;
export default mixIteration;
