import { errorFromResponse, networkError } from "./errors";

/**
 * Downloads an authenticated export (CSV) as a file. The token travels in the
 * Authorization header, never in the URL, so a plain link cannot be used.
 */
export async function downloadExport(authFetch: typeof fetch, path: string, filename: string): Promise<void> {
  let response: Response;
  try {
    response = await authFetch(path, { headers: { Accept: "text/csv" } });
  } catch (cause) {
    throw networkError(cause);
  }
  if (!response.ok) throw await errorFromResponse(response);
  const blob = await response.blob();
  const url = URL.createObjectURL(blob);
  const link = document.createElement("a");
  link.href = url;
  link.download = filename;
  document.body.appendChild(link);
  link.click();
  link.remove();
  window.setTimeout(() => URL.revokeObjectURL(url), 1000);
}
