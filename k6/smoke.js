// Smoke: a few VUs for a few seconds, every kind of request in turn, every answer checked.
// CI runs it (tests/test_k6_smoke.py); gentle enough for nginx's default per-IP rate limit.
//
//   make k6-smoke                       against http://127.0.0.1:8080 (make up)
//   SMOKE_VUS, SMOKE_DURATION           3, 10s
import exec from 'k6/execution';
import http from 'k6/http';

import { COMMON_OPTIONS, smokeShape } from './lib/load-options.js';
import { ALL_KINDS, lookup, thinkTime } from './lib/requests.js';
import { setupMix } from './lib/setup.js';
import {
  ALL_CHECKS_PASS,
  everyKindPasses,
  NO_FAILED_REQUESTS,
  SMOKE_LATENCY,
} from './lib/thresholds.js';

export const options = {
  thresholds: {
    ...NO_FAILED_REQUESTS,
    ...ALL_CHECKS_PASS,
    ...everyKindPasses(ALL_KINDS),
    ...SMOKE_LATENCY,
  },
  scenarios: { smoke: smokeShape() },
  ...COMMON_OPTIONS,
};

// 400 and 404 are answers this script asks for; anything else counts as a failed request.
http.setResponseCallback(http.expectedStatuses(200, 400, 404));

export const setup = setupMix;

export default function () {
  // Round robin over the kinds across all VUs, so each kind gets its share even in a short run.
  lookup(ALL_KINDS[exec.scenario.iterationInTest % ALL_KINDS.length]);
  thinkTime(0.2, 0.5);
}
