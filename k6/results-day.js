// Results going live: arrivals rising steeply and decaying, each person looking up their own
// registration number several times a few seconds apart, a small share mistyping it first.
// Contract: no failed request (400/404 are the right answers to mistyped ids), every check
// passes, p95 < 20 ms, p99 < 100 ms.
//
//   make k6-results-day
//   PEAK_ARRIVALS                       300 people a second at the peak
//   LOOKS_MIN, LOOKS_MAX                2, 5 lookups per person
//   LOOK_GAP_MIN, LOOK_GAP_MAX          2, 6 seconds between them
//   MISTYPED_SHARE                      0.03
//   STAGES="5s:50,10s:50,5s:0"          stages of your own (duration:arrivals a second)
import { COMMON_OPTIONS, resultsDayShape } from './lib/load-options.js';
import { expectMixAnswers, resultsDayIteration } from './lib/requests.js';
import { setupStudents } from './lib/setup.js';
import { ALL_CHECKS_PASS, NO_FAILED_REQUESTS, REFERENCE_LATENCY } from './lib/thresholds.js';

export const options = {
  thresholds: {
    ...NO_FAILED_REQUESTS,
    ...REFERENCE_LATENCY,
    ...ALL_CHECKS_PASS,
  },
  scenarios: { results_day: resultsDayShape() },
  ...COMMON_OPTIONS,
};

expectMixAnswers();

export const setup = setupStudents;
export default resultsDayIteration;
