// Soak: the realistic mix (see mix.js) at half the reference load for a long time: does anything
// leak, drift or pile up (pools, memory, the negative cache)? Watch Grafana while it runs.
// Contract: no failed request, every check passes, the reference latency holds throughout.
//
//   make k6-soak
//   SOAK_VUS, SOAK_DURATION             1500, 10m
import http from 'k6/http';

import { COMMON_OPTIONS, soakShape } from './lib/load-options.js';
import { MIX_WEIGHTS, mixIteration } from './lib/requests.js';
import { setupMix } from './lib/setup.js';
import {
  ALL_CHECKS_PASS,
  everyKindPasses,
  NO_FAILED_REQUESTS,
  REFERENCE_LATENCY,
} from './lib/thresholds.js';

export const options = {
  thresholds: {
    ...NO_FAILED_REQUESTS,
    ...REFERENCE_LATENCY,
    ...ALL_CHECKS_PASS,
    ...everyKindPasses(Object.keys(MIX_WEIGHTS)),
  },
  scenarios: { soak: soakShape() },
  ...COMMON_OPTIONS,
};

http.setResponseCallback(http.expectedStatuses(200, 400, 404));

export const setup = setupMix;
export default mixIteration;
