// Where the target is and what it holds, from the environment (`k6 run -e NAME=value` or exported
// variables), with defaults that fit `make up` on this machine.
//
//   BASE_URL        the public entry                                  http://127.0.0.1:8080
//   SURGE_STUDENTS  students the seeder made; ids are 10,000..10,000+N-1      664824
//   BOOKING_IDS     JSON array of real booking ids (k6/export_ids.py)  .run/k6/booking-ids.json
//   THINK_MIN/MAX   seconds a user waits between two lookups            0.5 / 2.5
//
// Through nginx, load tests need its per-IP rate limit off (SURGE_RATE_LIMIT=off): every k6 VU
// comes from 127.0.0.1, and 429s count as failed requests.

export const BASE_URL = (__ENV.BASE_URL || 'http://127.0.0.1:8080').replace(/\/+$/, '');

/** The largest valid student id: core/contract/students.py's (tests/test_k6_smoke.py checks). */
export const MAX_STUDENT_ID = 999999999;
export const FIRST_STUDENT_ID = 10000;
export const STUDENTS = intEnv('SURGE_STUDENTS', 664824, 1);
export const LAST_STUDENT_ID = FIRST_STUDENT_ID + STUDENTS - 1;

export const THINK_MIN = numberEnv('THINK_MIN', 0.5);
export const THINK_MAX = Math.max(THINK_MIN, numberEnv('THINK_MAX', 2.5));

// results-day.js: how many times one person looks their result up, how far apart, and the share
// of people who first mistype their registration number.
export const LOOKS_MIN = intEnv('LOOKS_MIN', 2, 1);
export const LOOKS_MAX = Math.max(LOOKS_MIN, intEnv('LOOKS_MAX', 5, 1));
export const LOOK_GAP_MIN = numberEnv('LOOK_GAP_MIN', 2);
export const LOOK_GAP_MAX = Math.max(LOOK_GAP_MIN, numberEnv('LOOK_GAP_MAX', 6));
export const MISTYPED_SHARE = Math.min(1, numberEnv('MISTYPED_SHARE', 0.03));

/** An integer from the environment ("664_824" reads like the figures in the docs). */
export function intEnv(name, fallback, min = 0) {
  const raw = (__ENV[name] || '').trim().replace(/_/g, '');
  if (raw === '') return fallback;
  if (!/^[0-9]+$/.test(raw) || Number(raw) < min) {
    throw new Error(`${name} must be a whole number >= ${min}, not ${JSON.stringify(__ENV[name])}`);
  }
  return Number(raw);
}

export function numberEnv(name, fallback) {
  const raw = (__ENV[name] || '').trim();
  if (raw === '') return fallback;
  const value = Number(raw);
  if (!Number.isFinite(value) || value < 0) {
    throw new Error(`${name} must be a number >= 0, not ${JSON.stringify(raw)}`);
  }
  return value;
}

/** A k6 duration ("30s", "10m", "1h30m") from the environment. */
export function durationEnv(name, fallback) {
  const raw = (__ENV[name] || '').trim();
  if (raw === '') return fallback;
  if (!/^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$/.test(raw)) {
    throw new Error(`${name} must be a duration like 30s, 10m or 1h30m, not "${raw}"`);
  }
  return raw;
}

/**
 * Stages from the environment in the form of k6's own --stage flag, comma-separated:
 * STAGES="30s:500,1m:3000,2m:3000,30s:0".
 */
export function stagesEnv(name, fallback) {
  const raw = (__ENV[name] || '').trim();
  if (raw === '') return fallback;
  return raw.split(',').map((part) => {
    const [duration, target, extra] = part.trim().split(':');
    if (extra !== undefined || !/^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$/.test(duration || '')
        || !/^[0-9]+$/.test(target || '')) {
      throw new Error(`${name}: each stage is duration:target (e.g. 30s:500), not "${part}"`);
    }
    return { duration, target: Number(target) };
  });
}

/** What every scenario sends along with each request. */
export const REQUEST_PARAMS = {
  timeout: durationEnv('REQUEST_TIMEOUT', '10s'),
};
