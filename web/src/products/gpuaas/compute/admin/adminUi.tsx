// Small pieces the gpuaas operator pages share: the GPU occupancy picture and the
// one-time enrollment command.

import type { components } from "../../../../shared/api/schema";
import { formatDateTime, formatDuration } from "../../../../shared/i18n/format";
import { CopyButton } from "../../../../shared/ui/CopyButton";

export type NodeView = components["schemas"]["NodeView"];
export type Occupancy = components["schemas"]["Occupancy"];
export type EnrollmentTicket = components["schemas"]["EnrollmentTicket"];
export type Sku = components["schemas"]["Sku"];

/** "3 of 8 GPUs in use", the words every occupancy picture carries. */
export function occupancyText(occupancy: Occupancy): string {
  if (occupancy.gpus_total === 0) return "No GPUs reported yet";
  return `${occupancy.gpus_allocated} of ${occupancy.gpus_total} GPU${occupancy.gpus_total === 1 ? "" : "s"} in use`;
}

/**
 * One square per GPU, used ones filled (and marked "U") and free ones outlined
 * (marked "F"), with the count in words next to it: never colour alone. The API
 * gives counts, not which indices are held, so used squares come first.
 */
export function GpuOccupancy({ occupancy, compact }: { occupancy: Occupancy; compact?: boolean }) {
  const total = Math.max(0, occupancy.gpus_total);
  const used = Math.min(total, Math.max(0, occupancy.gpus_allocated));
  const text = occupancyText(occupancy);
  return (
    <div className="gpu-occupancy" data-testid="gpu-occupancy">
      {total > 0 ? (
        <div className="gpu-grid" aria-hidden="true" data-testid="gpu-grid" data-used={used} data-total={total}>
          {Array.from({ length: total }, (_, index) => (
            <span key={index} className={index < used ? "gpu gpu-used" : "gpu gpu-free"} title={index < used ? "In use" : "Free"}>
              {index < used ? "U" : "F"}
            </span>
          ))}
        </div>
      ) : null}
      <span className={compact ? "muted" : undefined} data-testid="gpu-occupancy-text">
        {text}
      </span>
    </div>
  );
}

/** The command an operator pastes on the GPU host (see `gpuaas-agent enroll --help`). */
export function enrollmentCommand(token: string, origin: string = window.location.origin): string {
  return `gpuaas-agent enroll --server ${origin} --token ${token}`;
}

/**
 * A freshly issued enrollment token as a ready-to-paste command, with the warning
 * that it is shown once and when it expires.
 */
export function EnrollmentCommand({ ticket, hostname }: { ticket: EnrollmentTicket; hostname: string }) {
  const command = enrollmentCommand(ticket.token);
  const secondsLeft = (new Date(ticket.expires_at).getTime() - Date.now()) / 1000;
  return (
    <div className="enrollment">
      <p className="warning" role="note">
        <strong>Shown once.</strong> This enrollment token cannot be displayed again; copy it now. It expires{" "}
        <time dateTime={ticket.expires_at} data-testid="enroll-expires">
          {formatDateTime(ticket.expires_at)}
        </time>
        {Number.isFinite(secondsLeft) && secondsLeft > 0 ? ` (in ${formatDuration(secondsLeft)})` : ""} and works for
        one enrollment only. If it is lost or expires, issue a new one from the node&apos;s page.
      </p>
      <p>
        On <strong>{hostname}</strong>, as root, run:
      </p>
      <pre data-testid="enroll-command">{command}</pre>
      <p>
        <CopyButton text={command} label="Copy enrollment command" />
      </p>
      <p className="muted">
        A command line is visible to other users of the host; to keep the token out of it, run{" "}
        <code>GPUAAS_ENROLL_TOKEN=… gpuaas-agent enroll --server {window.location.origin}</code> instead. Then start the
        agent with <code>gpuaas-agent run</code>.
      </p>
    </div>
  );
}

/** How long ago an instant was, in words ("42 s ago"), or "never". */
export function ago(iso: string | null | undefined): string {
  if (!iso) return "never";
  const then = new Date(iso).getTime();
  if (Number.isNaN(then)) return iso;
  return `${formatDuration(Math.max(0, (Date.now() - then) / 1000))} ago`;
}

const BYTE_UNITS = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];

/** 1099511627776 → "1 TiB". */
export function formatBytes(bytes: number | null | undefined): string {
  if (bytes === null || bytes === undefined) return "—";
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < BYTE_UNITS.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${Number.isInteger(value) ? value : value.toFixed(1)} ${BYTE_UNITS[unit]}`;
}
