// The admin JSON API, called with the session cookie; every state-changing call carries the
// session's CSRF token in X-CSRF-Token (the browser adds a same-origin Origin itself).

const csrfToken = document.querySelector('meta[name="csrf-token"]').content;

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** Build "/admin/x?a=1" from a path and the parameters that have a value. */
export function withQuery(path, params) {
  const query = new URLSearchParams();
  for (const [name, value] of Object.entries(params || {})) {
    if (value !== undefined && value !== null && value !== "") query.set(name, value);
  }
  const text = query.toString();
  return text ? `${path}?${text}` : path;
}

/** The whole JSON answer ({data, meta}); an ApiError for the error envelope. */
export async function call(method, path, body) {
  const headers = { Accept: "application/json" };
  const init = { method, headers, credentials: "same-origin", cache: "no-store" };
  if (method !== "GET") {
    headers["X-CSRF-Token"] = csrfToken;
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body === undefined ? {} : body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (error) {
    throw new ApiError(0, "network_error", "The gateway could not be reached.");
  }
  if (response.status === 401) {
    // The session ended (logout elsewhere, expiry, a restart): log in again.
    window.location.assign("/login");
    throw new ApiError(401, "unauthorized", "The session has ended; log in again.");
  }
  let payload = null;
  try {
    payload = await response.json();
  } catch (error) {
    payload = null;
  }
  if (!response.ok) {
    const error = (payload && payload.error) || {};
    throw new ApiError(
      response.status,
      error.code || `http_${response.status}`,
      error.message || response.statusText,
    );
  }
  return payload;
}

export const get = (path, params) => call("GET", withQuery(path, params));
export const post = (path, body) => call("POST", path, body);

export const segment = (value) => encodeURIComponent(value);
