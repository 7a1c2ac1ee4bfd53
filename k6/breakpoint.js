// Breakpoint: requests per second rising steadily (no think time) until a threshold aborts the
// run: more than 1% failed requests or p95 above 250 ms. The `target_rate` gauge in the summary
// is the arrival rate k6 was asked for when the run stopped: the breakpoint. k6 exits 99 when
// it breaks (the expected outcome), 0 when surge held up to BREAKPOINT_MAX_RATE.
//
//   make k6-breakpoint
//   BREAKPOINT_START_RATE, BREAKPOINT_MAX_RATE, BREAKPOINT_DURATION    100, 20000, 10m
//   BREAKPOINT_PREALLOCATED_VUS, BREAKPOINT_MAX_VUS                    200, 3000
import exec from 'k6/execution';
import { Gauge } from 'k6/metrics';

import { COMMON_OPTIONS, breakpointShape } from './lib/load-options.js';
import { lookup } from './lib/requests.js';
import { setupStudents } from './lib/setup.js';
import { ALL_CHECKS_PASS, BREAKPOINT_ABORT } from './lib/thresholds.js';

const shape = breakpointShape();

export const options = {
  thresholds: {
    ...BREAKPOINT_ABORT,
    ...ALL_CHECKS_PASS,
  },
  scenarios: { breakpoint: shape },
  ...COMMON_OPTIONS,
};

const targetRate = new Gauge('target_rate');

/** The arrival rate the scenario asks for `elapsedMs` after it started (linear within stages). */
function rateAt(elapsedMs) {
  let from = shape.startRate;
  let start = 0;
  for (const stage of shape.stages) {
    const length = durationMs(stage.duration);
    if (elapsedMs < start + length) {
      return from + ((stage.target - from) * (elapsedMs - start)) / length;
    }
    from = stage.target;
    start += length;
  }
  return from;
}

function durationMs(duration) {
  const units = { ms: 1, s: 1000, m: 60000, h: 3600000 };
  let total = 0;
  for (const [, value, unit] of duration.matchAll(/([0-9.]+)(ms|s|m|h)/g)) {
    total += Number(value) * units[unit];
  }
  return total;
}

export const setup = setupStudents;

export default function () {
  targetRate.add(rateAt(Date.now() - exec.scenario.startTime));
  lookup('student');
}
