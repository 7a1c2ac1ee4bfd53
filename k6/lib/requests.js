// One function per kind of request: build the URL, send it named by route (never by raw URL),
// run the kind's checks. Kinds are also the `kind` tag on requests and checks.
import exec from 'k6/execution';
import http from 'k6/http';
import { sleep } from 'k6';

import { checkProblem, checkRecord } from './checks.js';
import {
  BASE_URL,
  LOOK_GAP_MAX,
  LOOK_GAP_MIN,
  LOOKS_MAX,
  LOOKS_MIN,
  MISTYPED_SHARE,
  REQUEST_PARAMS,
  THINK_MAX,
  THINK_MIN,
} from './config.js';
import {
  bookingId,
  malformedBookingId,
  malformedStudentId,
  studentId,
  unknownBookingId,
  unknownStudentId,
} from './ids.js';

const STUDENTS_ROUTE = '/students/{id}';
const BOOKINGS_ROUTE = '/bookings/{id}';

// kind: [route, id generator, what the answer must be]
const KINDS = {
  student: [STUDENTS_ROUTE, studentId, checkRecord],
  booking: [BOOKINGS_ROUTE, bookingId, checkRecord],
  unknown_student: [STUDENTS_ROUTE, unknownStudentId, problem(404)],
  unknown_booking: [BOOKINGS_ROUTE, unknownBookingId, problem(404)],
  malformed_student: [STUDENTS_ROUTE, malformedStudentId, problem(400)],
  malformed_booking: [BOOKINGS_ROUTE, malformedBookingId, problem(400)],
};

function problem(status) {
  return (res, kind) => checkProblem(res, kind, status);
}

export const ALL_KINDS = Object.keys(KINDS);

/** The realistic mix (mix.js, soak.js): share of each kind of request, in percent. */
export const MIX_WEIGHTS = {
  student: 75, // results day: nearly everyone is a student looking up a score
  booking: 15,
  unknown_student: 4, // a wrong registration number that is still a number
  unknown_booking: 2,
  malformed_student: 2, // typos: letters, signs, leading zeros
  malformed_booking: 2,
};

/** Send one request of this kind (for this id, or a new one) and check its answer. */
export function lookup(kind, given) {
  const [route, makeId, verify] = KINDS[kind];
  const id = given === undefined ? makeId() : given;
  const res = http.get(`${BASE_URL}${route.replace('{id}', id)}`, {
    ...REQUEST_PARAMS,
    tags: { name: route, kind },
  });
  verify(res, kind, id);
  return res;
}

/**
 * A kind drawn by weight, e.g. { student: 70, booking: 20, unknown_student: 5, ... }. Returns a
 * function, so the cumulative table is built once per VU rather than per iteration.
 */
export function weightedKinds(weights) {
  for (const kind of Object.keys(weights)) {
    if (!(kind in KINDS)) throw new Error(`unknown request kind ${JSON.stringify(kind)}`);
  }
  const entries = Object.entries(weights).filter(([, w]) => w > 0);
  const total = entries.reduce((sum, [, w]) => sum + w, 0);
  return () => {
    let r = Math.random() * total;
    for (const [kind, w] of entries) {
      r -= w;
      if (r < 0) return kind;
    }
    return entries[entries.length - 1][0];
  };
}

/** A user reading their result before the next lookup: THINK_MIN..THINK_MAX seconds. */
export function thinkTime(min = THINK_MIN, max = THINK_MAX) {
  sleep(min + Math.random() * (max - min));
}

/** One VU iteration of the students-only scenarios: a random student, then think time. */
export function studentIteration() {
  lookup('student');
  thinkTime();
}

const nextMixKind = weightedKinds(MIX_WEIGHTS);

/**
 * In the mix, 400 and 404 are the right answers to mistyped and unknown ids: not failed requests.
 * Call from a script's init context (mix.js, soak.js).
 */
export function expectMixAnswers() {
  http.setResponseCallback(http.expectedStatuses(200, 400, 404));
}

/**
 * One person on results day: a share of them first mistype their registration number (an
 * unknown or a malformed id), then everyone looks up their own result LOOKS_MIN..LOOKS_MAX times,
 * LOOK_GAP_MIN..LOOK_GAP_MAX seconds apart (reloading, showing it to family).
 */
export function resultsDayIteration() {
  if (Math.random() < MISTYPED_SHARE) {
    // Half of them a number that is no one's, half one that is not a number: alternately.
    const mistake = exec.scenario.iterationInTest % 2 ? 'malformed_student' : 'unknown_student';
    lookup(mistake);
    thinkTime(LOOK_GAP_MIN, LOOK_GAP_MAX);
  }
  const own = studentId();
  const looks = LOOKS_MIN + Math.floor(Math.random() * (LOOKS_MAX - LOOKS_MIN + 1));
  for (let i = 0; i < looks; i += 1) {
    if (i > 0) thinkTime(LOOK_GAP_MIN, LOOK_GAP_MAX);
    lookup('student', own);
  }
}

/** One VU iteration of the realistic mix: a kind drawn by MIX_WEIGHTS, then think time. */
export function mixIteration() {
  lookup(nextMixKind());
  thinkTime();
}
