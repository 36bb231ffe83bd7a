// /admin/audit: the audit log, newest first, filtered by everything the API offers
// (actor, action, target, time range), with each entry's details and a CSV export
// of the same filter.

import { useEffect, useState, type FormEvent } from "react";
import { keepPreviousData, useQuery } from "@tanstack/react-query";
import { useSearchParams } from "react-router";
import type { components } from "../../shared/api/schema";
import { useApi, useApiContext } from "../../shared/data/ApiContext";
import { unwrap } from "../../shared/data/client";
import { downloadExport } from "../../shared/data/download";
import { formatDateTime, shortId } from "../../shared/i18n/format";
import { useAnnounce } from "../../shared/ui/Announcer";
import { Field } from "../../shared/ui/Field";
import { Page, StatusBadge } from "../../shared/ui/Page";
import { Pager, useCursorPager } from "../../shared/ui/Pager";
import { Empty, QueryView } from "../../shared/ui/states";
import { ActionError } from "../../shared/ui/ActionError";
import { ApiError } from "../../shared/data/errors";

type AuditLog = components["schemas"]["AuditLog"];

const PAGE_SIZE = 50;

/** The API's filters; every one is a query parameter of both the list and the export. */
const FILTER_KEYS = ["actor", "action", "target", "from", "to"] as const;
type FilterKey = (typeof FILTER_KEYS)[number];
type Filters = Partial<Record<FilterKey, string>>;

function filtersFrom(params: URLSearchParams): Filters {
  const filters: Filters = {};
  for (const key of FILTER_KEYS) {
    const value = params.get(key);
    if (value !== null && value.trim() !== "") filters[key] = value.trim();
  }
  return filters;
}

function toSearch(filters: Filters): URLSearchParams {
  const params = new URLSearchParams();
  for (const key of FILTER_KEYS) {
    const value = filters[key];
    if (value) params.set(key, value);
  }
  return params;
}

/** RFC 3339 → the value a datetime-local input shows (local time, minutes). */
function toLocalInput(iso: string | undefined): string {
  if (!iso) return "";
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return "";
  const pad = (n: number) => String(n).padStart(2, "0");
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}T${pad(date.getHours())}:${pad(date.getMinutes())}`;
}

/** A datetime-local value (local time) → RFC 3339 in UTC; `end` makes the minute inclusive. */
function fromLocalInput(value: string, end = false): string | undefined {
  if (value === "") return undefined;
  const date = new Date(value);
  if (Number.isNaN(date.getTime())) return undefined;
  if (end) date.setSeconds(59, 999);
  return date.toISOString();
}

/** API field names in 400s (`actor_id` from the filter check) → the form's fields. */
const FIELD_OF: Record<string, FilterKey> = { actor: "actor", actor_id: "actor", action: "action", target: "target", from: "from", to: "to" };

function FilterForm({ filters, onApply, error }: { filters: Filters; onApply: (filters: Filters) => void; error: unknown }) {
  const [actor, setActor] = useState(filters.actor ?? "");
  const [action, setAction] = useState(filters.action ?? "");
  const [target, setTarget] = useState(filters.target ?? "");
  const [from, setFrom] = useState(toLocalInput(filters.from));
  const [to, setTo] = useState(toLocalInput(filters.to));
  const [rangeError, setRangeError] = useState<string | null>(null);

  // Back/forward changes the URL: show what is applied.
  useEffect(() => {
    setActor(filters.actor ?? "");
    setAction(filters.action ?? "");
    setTarget(filters.target ?? "");
    setFrom(toLocalInput(filters.from));
    setTo(toLocalInput(filters.to));
  }, [filters.actor, filters.action, filters.target, filters.from, filters.to]);

  const apiError = error instanceof ApiError && error.status === 400 ? error : null;
  const serverField = apiError?.field ? (FIELD_OF[apiError.field] ?? null) : null;
  const errorFor = (key: FilterKey) => (serverField === key && apiError ? apiError.message : null);

  function submit(event: FormEvent) {
    event.preventDefault();
    const fromIso = fromLocalInput(from);
    const toIso = fromLocalInput(to, true);
    if (fromIso && toIso && fromIso > toIso) {
      setRangeError("“From time” must not be later than “To time”.");
      return;
    }
    setRangeError(null);
    onApply({ actor: actor.trim(), action: action.trim(), target: target.trim(), from: fromIso, to: toIso });
  }

  function clear() {
    setRangeError(null);
    onApply({});
  }

  return (
    <form className="card" onSubmit={submit} aria-labelledby="audit-filter-heading" noValidate>
      <h2 id="audit-filter-heading">Filter</h2>
      <div className="toolbar">
        <Field label="Actor" error={errorFor("actor")} hint="Exact id of a user or service account.">
          {(props) => <input {...props} value={actor} onChange={(e) => setActor(e.target.value)} autoComplete="off" spellCheck={false} />}
        </Field>
        <Field label="Action" error={errorFor("action")} hint="Exact action, e.g. node.register or allocation.force_release.">
          {(props) => <input {...props} value={action} onChange={(e) => setAction(e.target.value)} autoComplete="off" spellCheck={false} />}
        </Field>
        <Field label="Target" error={errorFor("target")} hint="Exact target, as shown in the Target column.">
          {(props) => <input {...props} value={target} onChange={(e) => setTarget(e.target.value)} autoComplete="off" spellCheck={false} />}
        </Field>
        <Field label="From time" error={errorFor("from")} hint="Local time, inclusive.">
          {(props) => <input {...props} type="datetime-local" value={from} onChange={(e) => setFrom(e.target.value)} />}
        </Field>
        <Field label="To time" error={rangeError ?? errorFor("to")} hint="Local time, inclusive.">
          {(props) => <input {...props} type="datetime-local" value={to} onChange={(e) => setTo(e.target.value)} />}
        </Field>
      </div>
      <div className="toolbar">
        <button type="submit" className="button button-primary">
          Apply filters
        </button>
        <button type="button" className="button" onClick={clear}>
          Clear filters
        </button>
      </div>
    </form>
  );
}

function Actor({ entry }: { entry: AuditLog }) {
  return (
    <>
      <span>{entry.actor_type.replace(/_/g, " ")}</span>
      {entry.actor_role ? <span className="muted"> · {entry.actor_role.replace(/_/g, " ")}</span> : null}
      <div>
        <code title={entry.actor_id}>{shortId(entry.actor_id)}</code>
      </div>
    </>
  );
}

function AuditTable({ entries }: { entries: AuditLog[] }) {
  return (
    <div className="table-wrap">
      <table>
        <caption className="visually-hidden">Audit log entries, newest first</caption>
        <thead>
          <tr>
            <th scope="col">Time</th>
            <th scope="col">Actor</th>
            <th scope="col">Action</th>
            <th scope="col">Target</th>
            <th scope="col">Result</th>
            <th scope="col">Correlation id</th>
            <th scope="col">Details</th>
          </tr>
        </thead>
        <tbody>
          {entries.map((entry) => (
            <tr key={entry.id} data-testid="audit-row" data-action={entry.action} data-result={entry.result}>
              <td>
                <time dateTime={entry.at}>{formatDateTime(entry.at)}</time>
              </td>
              <td>
                <Actor entry={entry} />
              </td>
              <td>
                <code data-testid="audit-action">{entry.action}</code>
              </td>
              <td>
                <code className="audit-target">{entry.target}</code>
              </td>
              <td>
                <StatusBadge status={entry.result} />
              </td>
              <td>
                <code title={entry.correlation_id}>{shortId(entry.correlation_id)}</code>
              </td>
              <td>
                <details>
                  <summary>Details</summary>
                  {entry.tenant_id ? (
                    <p>
                      Tenant <code>{entry.tenant_id}</code>
                    </p>
                  ) : null}
                  <p>
                    Entry <code>{entry.id}</code>
                  </p>
                  <p>
                    Correlation id <code>{entry.correlation_id}</code>
                  </p>
                  <pre>{JSON.stringify(entry.details, null, 2)}</pre>
                </details>
              </td>
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}

function AuditList({ filters, onError }: { filters: Filters; onError: (error: unknown) => void }) {
  const api = useApi();
  const pager = useCursorPager();
  const entries = useQuery({
    queryKey: ["admin", "audit-logs", filters, pager.cursor],
    queryFn: () =>
      unwrap(
        api.GET("/api/v1/admin/audit-logs", {
          params: { query: { ...filters, cursor: pager.cursor ?? undefined, limit: PAGE_SIZE } },
        }),
      ),
    placeholderData: keepPreviousData,
  });
  useEffect(() => onError(entries.error), [entries.error, onError]);
  const filtered = Object.keys(filters).length > 0;
  return (
    <QueryView
      query={entries}
      loadingLabel="Loading audit log"
      isEmpty={(data) => data.items.length === 0 && pager.page === 1}
      empty={
        <Empty title={filtered ? "No entries match these filters" : "The audit log is empty"}>
          {filtered ? <p>Widen the time range or clear a filter.</p> : null}
        </Empty>
      }
    >
      {(data) => (
        <>
          <AuditTable entries={data.items} />
          <Pager pager={pager} nextCursor={data.next_cursor} label="Audit log" />
        </>
      )}
    </QueryView>
  );
}

export default function AuditLogPage() {
  const { authFetch } = useApiContext();
  const announce = useAnnounce();
  const [params, setParams] = useSearchParams();
  const filters = filtersFrom(params);
  const search = toSearch(filters).toString();
  const [listError, setListError] = useState<unknown>(null);
  const [exporting, setExporting] = useState(false);
  const [exportError, setExportError] = useState<unknown>(null);

  async function exportCsv() {
    setExporting(true);
    setExportError(null);
    try {
      await downloadExport(authFetch, `/api/v1/admin/audit-logs/export${search ? `?${search}` : ""}`, "audit-log.csv");
      announce("Audit log exported as audit-log.csv");
    } catch (error) {
      setExportError(error);
    } finally {
      setExporting(false);
    }
  }

  return (
    <Page
      title="Audit log"
      actions={
        <button type="button" className="button" onClick={() => void exportCsv()} disabled={exporting} aria-busy={exporting}>
          {exporting ? "Exporting…" : "Export CSV"}
        </button>
      }
    >
      {exportError ? <ActionError error={exportError} what="The export failed" /> : null}
      <FilterForm
        filters={filters}
        error={listError}
        onApply={(next) => {
          setParams(toSearch(next));
        }}
      />
      <section aria-labelledby="audit-entries-heading">
        <h2 id="audit-entries-heading" className="visually-hidden">
          Entries
        </h2>
        {/* Keyed by the filters, so a new filter starts again on page 1. */}
        <AuditList key={search} filters={filters} onError={setListError} />
      </section>
    </Page>
  );
}
