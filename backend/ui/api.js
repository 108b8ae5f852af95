// The dualseg REST API as the review page uses it. Every call sends the bearer token, which lives in
// sessionStorage only (this tab; gone when it closes).

const TOKEN_KEY = "dualseg.token";
export const API = "/api/v1";

export const auth = {
  get token() { return sessionStorage.getItem(TOKEN_KEY) || ""; },
  set(token) { sessionStorage.setItem(TOKEN_KEY, token); },
  clear() { sessionStorage.removeItem(TOKEN_KEY); },
};

export class ApiError extends Error {
  constructor(status, code, message, details) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details;
  }
}

function headers(extra = {}) {
  return { Authorization: `Bearer ${auth.token}`, ...extra };
}

async function errorFrom(resp) {
  let code = "http_error";
  let message = `${resp.status} ${resp.statusText}`;
  let details;
  try {
    const body = await resp.json();
    if (body && body.error) {
      code = body.error.code || code;
      message = body.error.message || message;
      details = body.error.details;
    } else if (body && body.detail) {
      message = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    }
  } catch { /* not JSON */ }
  const err = new ApiError(resp.status, code, message, details);
  if (resp.status === 401) window.dispatchEvent(new CustomEvent("dualseg:unauthorized", { detail: err }));
  return err;
}

/** JSON request; throws ApiError with the server's message on 4xx/5xx. */
export async function api(path, { method = "GET", json, body, signal } = {}) {
  const init = { method, headers: headers(), signal };
  if (json !== undefined) {
    init.body = JSON.stringify(json);
    init.headers["Content-Type"] = "application/json";
  } else if (body !== undefined) {
    init.body = body;
  }
  const resp = await fetch(path.startsWith("/") ? path : `${API}/${path}`, init);
  if (!resp.ok) throw await errorFrom(resp);
  if (resp.status === 204) return null;
  return resp.json();
}

/** Binary download (NIfTI volumes) as an ArrayBuffer. */
export async function fetchBytes(path, { signal } = {}) {
  const resp = await fetch(path, { headers: headers(), signal });
  if (!resp.ok) throw await errorFrom(resp);
  return resp.arrayBuffer();
}

/** Upload files as a new case with XMLHttpRequest (for upload progress). Resolves to CaseCreated. */
export function uploadCase(files, onProgress) {
  return new Promise((resolve, reject) => {
    const form = new FormData();
    for (const f of files) form.append("files", f, f.name);
    const xhr = new XMLHttpRequest();
    xhr.open("POST", `${API}/cases`);
    xhr.setRequestHeader("Authorization", `Bearer ${auth.token}`);
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) onProgress(e.loaded / e.total); };
    xhr.onload = () => {
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch { /* empty */ }
      if (xhr.status >= 200 && xhr.status < 300) {
        onProgress(1);
        resolve(body);
        return;
      }
      const e = body && body.error ? body.error : { code: "http_error", message: `${xhr.status} ${xhr.statusText}` };
      if (xhr.status === 401) window.dispatchEvent(new CustomEvent("dualseg:unauthorized"));
      reject(new ApiError(xhr.status, e.code, e.message, e.details));
    };
    xhr.onerror = () => reject(new ApiError(0, "network", "the upload failed (network error)"));
    xhr.send(form);
  });
}

/** PUT the corrected label map (NIfTI bytes on the image grid); resolves to CorrectionPublic. */
export async function putCorrection(caseId, bytes, filename = "correction.nii.gz") {
  const form = new FormData();
  form.append("file", new Blob([bytes], { type: "application/gzip" }), filename);
  return api(`${API}/cases/${encodeURIComponent(caseId)}/correction`, { method: "PUT", body: form });
}

export const listCases = (params = {}) =>
  api(`${API}/cases?${new URLSearchParams({ sort: "uncertainty", limit: "200", ...params })}`);
export const getCase = (id) => api(`${API}/cases/${encodeURIComponent(id)}`);
export const getJob = (id) => api(`${API}/jobs/${encodeURIComponent(id)}`);
export const getRegions = (id) => api(`${API}/cases/${encodeURIComponent(id)}/regions`);
export const getModel = (version) => api(`${API}/models/${encodeURIComponent(version)}`);
export const listCorrections = (id) => api(`${API}/cases/${encodeURIComponent(id)}/corrections`);
export const resegment = (id) =>
  api(`${API}/cases/${encodeURIComponent(id)}/segmentations`, { method: "POST", json: {} });

export const volumeUrls = (id) => {
  const base = `${API}/cases/${encodeURIComponent(id)}`;
  return { image: `${base}/image`, mask: `${base}/mask?format=nifti`, entropy: `${base}/uncertainty?format=nifti` };
};
