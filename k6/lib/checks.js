// Per-kind checks on status, content type and body. Check names carry no ids, so each kind
// aggregates into a handful of checks; the `kind` tag lets thresholds and dashboards split them.
import { check } from 'k6';

const JSON_TYPE = 'application/json';
const PROBLEM_TYPE = 'application/problem+json';

function mediaType(res) {
  return (res.headers['Content-Type'] || '').split(';')[0].trim().toLowerCase();
}

function body(res) {
  try {
    return res.json();
  } catch (_) {
    return undefined;
  }
}

/** 200, application/json, and the record's id is the one asked for (bookings: lower-cased). */
export function checkRecord(res, kind, id) {
  const record = body(res);
  const want = kind === 'student' ? Number(id) : String(id).toLowerCase();
  return check(
    res,
    {
      [`${kind}: status 200`]: (r) => r.status === 200,
      [`${kind}: application/json`]: (r) => mediaType(r) === JSON_TYPE,
      [`${kind}: body has the id asked for`]: () => record !== undefined && record !== null
        && record.id === want,
    },
    { kind },
  );
}

/** An RFC 9457 problem: the status, application/problem+json, a body whose status matches. */
export function checkProblem(res, kind, status) {
  const problem = body(res);
  return check(
    res,
    {
      [`${kind}: status ${status}`]: (r) => r.status === status,
      [`${kind}: application/problem+json`]: (r) => mediaType(r) === PROBLEM_TYPE,
      [`${kind}: problem body with status ${status}`]: () => problem !== undefined
        && problem !== null && problem.status === status && typeof problem.title === 'string'
        && typeof problem.detail === 'string',
    },
    { kind },
  );
}
