// setup() helpers: refuse to load a target that is not ready, or whose data is not what this run
// assumes (SURGE_STUDENTS, the booking id file). Each refusal aborts the run (k6 exits 108) with
// a message that says what to fix, instead of a run full of failures that look like overload.
import exec from 'k6/execution';
import http from 'k6/http';

import { BASE_URL, FIRST_STUDENT_ID, LAST_STUDENT_ID, REQUEST_PARAMS } from './config.js';
import { BOOKING_IDS_FILE, bookingIdCount, firstBookingId } from './ids.js';

function get(path, name = path) {
  return http.get(`${BASE_URL}${path}`, { ...REQUEST_PARAMS, tags: { name, kind: 'setup' } });
}

function answer(res) {
  return res.status ? `HTTP ${res.status}` : `no answer (${res.error})`;
}

/** GET /ready must answer 200: Redis and Postgres reachable behind the target. */
export function requireReady() {
  const res = get('/ready');
  if (res.status !== 200) {
    exec.test.abort(`${BASE_URL}/ready gave ${answer(res)}: refusing to test an unready target`);
  }
}

/** The first and last student ids of SURGE_STUDENTS exist on the target. */
export function requireStudents() {
  for (const id of [FIRST_STUDENT_ID, LAST_STUDENT_ID]) {
    const res = get(`/students/${id}`, '/students/{id}');
    if (res.status !== 200) {
      exec.test.abort(`${BASE_URL}/students/${id} gave ${answer(res)}: does SURGE_STUDENTS `
        + `(ids ${FIRST_STUDENT_ID}..${LAST_STUDENT_ID}) match the seeded data?`);
    }
  }
}

/** The booking id file is there, not empty, and its ids exist on the target. */
export function requireBookings() {
  const count = bookingIdCount();
  if (count === 0) {
    exec.test.abort(`no booking ids in ${BOOKING_IDS_FILE}: write them with `
      + '`python k6/export_ids.py` (the make targets do) or point BOOKING_IDS at such a file');
  }
  const id = firstBookingId();
  const res = get(`/bookings/${id}`, '/bookings/{id}');
  if (res.status !== 200) {
    exec.test.abort(`${BASE_URL}/bookings/${id} gave ${answer(res)}: `
      + `${BOOKING_IDS_FILE} does not match the target's data; export it again`);
  }
}

/** setup() of the students-only scenarios (reference ramp, spike, breakpoint). */
export function setupStudents() {
  requireReady();
  requireStudents();
}

/** setup() of the scenarios that also look bookings up (smoke, mix, soak). */
export function setupMix() {
  setupStudents();
  requireBookings();
}
