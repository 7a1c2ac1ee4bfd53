// The reference student-results test: random student ids over the whole dataset, ramping VUs to
// 3,000, each waiting 0.5-2.5 s between lookups, as the original write-up did.
// Contract: no failed request, p95 < 20 ms, p99 < 100 ms.
//
//   make k6-ramp
//   PEAK_VUS=300 make k6-ramp           the default stages scaled to a 300-VU peak
//   STAGES="10s:300,20s:300,5s:0"       stages of your own (duration:target, comma-separated)
//   THINK_MIN, THINK_MAX                0.5, 2.5
import { COMMON_OPTIONS, referenceRampShape } from './lib/load-options.js';
import { studentIteration } from './lib/requests.js';
import { setupStudents } from './lib/setup.js';
import { ALL_CHECKS_PASS, NO_FAILED_REQUESTS, REFERENCE_LATENCY } from './lib/thresholds.js';

export const options = {
  thresholds: {
    ...NO_FAILED_REQUESTS,
    ...REFERENCE_LATENCY,
    ...ALL_CHECKS_PASS,
  },
  scenarios: { reference_ramp: referenceRampShape() },
  ...COMMON_OPTIONS,
};

export const setup = setupStudents;
export default studentIteration;
