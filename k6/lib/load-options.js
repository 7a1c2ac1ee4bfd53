// Load shapes, one function per scenario script, each overridable from the environment so the
// same script serves a full run (`make k6-ramp`) and a short one (CI, a quick look).
import { durationEnv, intEnv, stagesEnv } from './config.js';

/** Options every script shares. */
export const COMMON_OPTIONS = {
  // No `url` tag: with random ids every request has its own URL, which would make one time series
  // per id in Prometheus (remote write) and one tag set per id in k6. Requests are named by route.
  systemTags: ['proto', 'status', 'method', 'name', 'group', 'check', 'error', 'error_code',
    'scenario', 'expected_response'],
  summaryTrendStats: ['avg', 'min', 'med', 'p(90)', 'p(95)', 'p(99)', 'max'],
};

/** A few VUs for a few seconds, every kind of request: does everything answer as it should? */
export function smokeShape() {
  return {
    executor: 'constant-vus',
    vus: intEnv('SMOKE_VUS', 3, 1),
    duration: durationEnv('SMOKE_DURATION', '10s'),
    gracefulStop: '5s',
  };
}

export const REFERENCE_PEAK_VUS = 3000;

/** Stages to a given peak: the targets of `stages` scaled by peak / REFERENCE_PEAK_VUS. */
function scaled(stages, peak) {
  return stages.map((s) => ({
    duration: s.duration,
    target: Math.round((s.target * peak) / REFERENCE_PEAK_VUS),
  }));
}

/**
 * The reference student-results test: ramping VUs to 3,000, each waiting 0.5-2.5 s between
 * lookups. STAGES="30s:500,1m:3000,30s:0" replaces the stages; PEAK_VUS scales the default ones.
 */
export function referenceRampShape() {
  const stages = [
    { duration: '30s', target: 500 },
    { duration: '1m', target: 1500 },
    { duration: '1m', target: 3000 },
    { duration: '2m', target: 3000 },
    { duration: '30s', target: 0 },
  ];
  return {
    executor: 'ramping-vus',
    startVUs: 0,
    stages: stagesEnv('STAGES', scaled(stages, intEnv('PEAK_VUS', REFERENCE_PEAK_VUS, 1))),
    gracefulRampDown: '10s',
  };
}

/**
 * The moment results go live: 0 to PEAK_VUS (3,000) within SPIKE_RISE (5 s), held SPIKE_HOLD (1 m),
 * back to 0 within SPIKE_FALL (10 s).
 */
export function spikeShape() {
  const peak = intEnv('PEAK_VUS', REFERENCE_PEAK_VUS, 1);
  return {
    executor: 'ramping-vus',
    startVUs: 0,
    stages: stagesEnv('STAGES', [
      { duration: durationEnv('SPIKE_RISE', '5s'), target: peak },
      { duration: durationEnv('SPIKE_HOLD', '1m'), target: peak },
      { duration: durationEnv('SPIKE_FALL', '10s'), target: 0 },
    ]),
    gracefulRampDown: '10s',
  };
}

/** Half the reference load (1,500 VUs with the same think time), held for SOAK_DURATION. */
export function soakShape() {
  return {
    executor: 'constant-vus',
    vus: intEnv('SOAK_VUS', REFERENCE_PEAK_VUS / 2, 1),
    duration: durationEnv('SOAK_DURATION', '10m'),
    gracefulStop: '10s',
  };
}

/**
 * Requests per second rising linearly from BREAKPOINT_START_RATE (100) to BREAKPOINT_MAX_RATE
 * (20,000) over BREAKPOINT_DURATION (10 m), no think time, until a threshold aborts the run.
 */
export function breakpointShape() {
  const maxRate = intEnv('BREAKPOINT_MAX_RATE', 20000, 1);
  return {
    executor: 'ramping-arrival-rate',
    startRate: intEnv('BREAKPOINT_START_RATE', 100, 0),
    timeUnit: '1s',
    preAllocatedVUs: intEnv('BREAKPOINT_PREALLOCATED_VUS', 200, 1),
    maxVUs: intEnv('BREAKPOINT_MAX_VUS', REFERENCE_PEAK_VUS, 1),
    stages: stagesEnv('STAGES', [
      { duration: durationEnv('BREAKPOINT_DURATION', '10m'), target: maxRate },
    ]),
    gracefulStop: '10s',
  };
}

/** The realistic mix: up to MIX_VUS (1,000) with think time, held MIX_HOLD (2 m). */
export function mixShape() {
  const vus = intEnv('MIX_VUS', 1000, 1);
  return {
    executor: 'ramping-vus',
    startVUs: 0,
    stages: stagesEnv('STAGES', [
      { duration: '30s', target: vus },
      { duration: durationEnv('MIX_HOLD', '2m'), target: vus },
      { duration: '10s', target: 0 },
    ]),
    gracefulRampDown: '10s',
  };
}

/**
 * Results going live: people arriving (new iterations a second) rising to PEAK_ARRIVALS (300)
 * within 10 s, held 10 s, decaying to a quarter over 40 s, then to none over 10 s. Each person
 * stays for several lookups (resultsDayIteration), so the VUs in use are about arrivals x the
 * seconds a person stays. STAGES (duration:arrivals a second) replaces the stages.
 */
export function resultsDayShape() {
  const peak = intEnv('PEAK_ARRIVALS', 300, 1);
  const stages = [
    { duration: '10s', target: peak },
    { duration: '10s', target: peak },
    { duration: '40s', target: Math.round(peak / 4) },
    { duration: '10s', target: 0 },
  ];
  return {
    executor: 'ramping-arrival-rate',
    startRate: 0,
    timeUnit: '1s',
    preAllocatedVUs: intEnv('PREALLOCATED_VUS', 3000, 1),
    maxVUs: intEnv('MAX_VUS', 4000, 1),
    stages: stagesEnv('STAGES', stages),
    gracefulStop: '30s',
  };
}
