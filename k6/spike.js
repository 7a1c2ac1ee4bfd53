// Spike: the moment results go live. 0 to 3,000 VUs within 5 s, held, random student ids with the
// reference think time. Contract: no failed request, p99 < 100 ms.
//
//   make k6-spike
//   PEAK_VUS, SPIKE_RISE, SPIKE_HOLD, SPIKE_FALL    3000, 5s, 1m, 10s
//   STAGES="5s:3000,1m:3000,10s:0"      stages of your own
import { COMMON_OPTIONS, spikeShape } from './lib/load-options.js';
import { studentIteration } from './lib/requests.js';
import { setupStudents } from './lib/setup.js';
import { ALL_CHECKS_PASS, NO_FAILED_REQUESTS, SPIKE_LATENCY } from './lib/thresholds.js';

export const options = {
  thresholds: {
    ...NO_FAILED_REQUESTS,
    ...SPIKE_LATENCY,
    ...ALL_CHECKS_PASS,
  },
  scenarios: { spike: spikeShape() },
  ...COMMON_OPTIONS,
};

export const setup = setupStudents;
export default studentIteration;
