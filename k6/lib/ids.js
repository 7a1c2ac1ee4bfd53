// Ids for every kind of request: real ones, valid-but-unknown ones and malformed ones.
//
// Student ids are computable (10,000..10,000+SURGE_STUDENTS-1). Booking ids are random UUIDs known
// only to the database, so k6/export_ids.py writes a sample of them to a JSON file (BOOKING_IDS);
// it is loaded once into a SharedArray that every VU reads without a copy of its own.
import { SharedArray } from 'k6/data';

import { FIRST_STUDENT_ID, LAST_STUDENT_ID, MAX_STUDENT_ID, STUDENTS } from './config.js';

export const BOOKING_IDS_FILE = __ENV.BOOKING_IDS
  || import.meta.resolve('../../.run/k6/booking-ids.json');

// A missing file gives an empty array rather than an init error, so scripts that need no bookings
// (and `k6 inspect`) run without it; scripts that do need them call requireBookingIds() in setup().
const bookingIds = new SharedArray('booking ids', () => {
  let text;
  try {
    text = open(BOOKING_IDS_FILE);
  } catch (_) {
    return [];
  }
  const ids = JSON.parse(text);
  if (!Array.isArray(ids) || ids.some((id) => typeof id !== 'string')) {
    throw new Error(`${BOOKING_IDS_FILE}: expected a JSON array of booking id strings`);
  }
  return ids;
});

export function bookingIdCount() {
  return bookingIds.length;
}

/** The first id of the file: a fixed probe for setup(). */
export function firstBookingId() {
  return bookingIds[0];
}

function randomInt(min, max) {
  // Inclusive on both ends.
  return min + Math.floor(Math.random() * (max - min + 1));
}

function pick(items) {
  return items[Math.floor(Math.random() * items.length)];
}

/** A student the seeder made, uniformly over the whole dataset. */
export function studentId() {
  return String(randomInt(FIRST_STUDENT_ID, LAST_STUDENT_ID));
}

/** A well-formed student id no student has: below the first id or past the last one. */
export function unknownStudentId() {
  if (Math.random() < 0.5) return String(randomInt(1, FIRST_STUDENT_ID - 1));
  const past = LAST_STUDENT_ID + 1;
  return String(randomInt(past, Math.min(MAX_STUDENT_ID, past + 10 * STUDENTS)));
}

// Each is one path segment (no '/', never empty) that parse_student_id() rejects: a sign, leading
// zeros, separators, non-digits, non-ASCII digits, one past the largest id, far too long.
const MALFORMED_STUDENT_IDS = [
  'abc', '12a45', '-10001', '+10001', '010001', '0', '10_001', '1e5', '10001.0', '%2010001',
  encodeURIComponent('١٠٠٠١'), String(MAX_STUDENT_ID + 1), '99999999999999999999', 'null',
];

export function malformedStudentId() {
  return pick(MALFORMED_STUDENT_IDS);
}

/** A real booking id from the exported sample; now and then upper-cased (ids are case-blind). */
export function bookingId() {
  const id = bookingIds[Math.floor(Math.random() * bookingIds.length)];
  return Math.random() < 0.1 ? id.toUpperCase() : id;
}

/** A well-formed UUID v4 that is not a booking (2^122 of them: a collision is not a concern). */
export function unknownBookingId() {
  return crypto.randomUUID();
}

// Near misses of the canonical 8-4-4-4-12 form that parse_booking_id() rejects.
const MALFORMED_BOOKING_SHAPES = [
  (u) => u.replace(/-/g, ''), // 32 hex digits, no dashes
  (u) => `%7B${u}%7D`, // braces
  (u) => `urn:uuid:${u}`,
  (u) => u.slice(0, 35), // one digit short
  (u) => `${u}0`, // one digit long
  (u) => `${u.slice(0, 9)}g${u.slice(10)}`, // a non-hex digit
  (u) => u.replace(/-/g, '_'),
  () => 'not-a-booking-id',
  () => '12345',
];

export function malformedBookingId() {
  return pick(MALFORMED_BOOKING_SHAPES)(crypto.randomUUID());
}
