// Billing operators: card payment sessions. Sessions that failed to reconcile (Stripe
// reported an amount or currency that differs from ours, so nothing was credited)
// come first; then every session, filtered by status and tenant.

import { useEffect, useState } from "react";
import { Link } from "react-router";
import { keepPreviousData, useQuery } from "@tanstack/react-query";
import type { components } from "../../../shared/api/schema";
import { useApi } from "../../../shared/data/ApiContext";
import { unwrap } from "../../../shared/data/client";
import { formatDateTime, formatMoney } from "../../../shared/i18n/format";
import { Field, SelectField } from "../../../shared/ui/Field";
import { Page, StatusBadge } from "../../../shared/ui/Page";
import { Pager, useCursorPager } from "../../../shared/ui/Pager";
import { Empty, QueryView } from "../../../shared/ui/states";
import { ShortId } from "../forms";

type SessionStatus = components["schemas"]["SessionStatus"];

const STATUSES: { value: SessionStatus; label: string }[] = [
  { value: "initiated", label: "Initiated" },
  { value: "checkout_completed", label: "Checkout completed" },
  { value: "credited", label: "Credited" },
  { value: "expired", label: "Expired" },
  { value: "failed", label: "Failed" },
  { value: "failed_reconcile", label: "Failed to reconcile" },
];

function Id({ value }: { value: string | null | undefined }) {
  if (!value) return <span className="muted">—</span>;
  return <ShortId value={value} />;
}

/** One filter's pages of sessions; a new filter mounts a new list, on page 1. */
function SessionList({
  status,
  tenantId,
  caption,
  emptyTitle,
  testId,
}: {
  status: SessionStatus | "";
  tenantId: string;
  caption: string;
  emptyTitle: string;
  testId: string;
}) {
  const api = useApi();
  const pager = useCursorPager();
  const query = useQuery({
    queryKey: ["admin", "payments", "sessions", status, tenantId, pager.cursor],
    queryFn: () =>
      unwrap(
        api.GET("/api/v1/admin/payments/sessions", {
          params: {
            query: {
              limit: 50,
              cursor: pager.cursor ?? undefined,
              status: status || undefined,
              tenant_id: tenantId || undefined,
            },
          },
        }),
      ),
    placeholderData: keepPreviousData,
    refetchInterval: 30_000,
  });
  return (
    <QueryView query={query} loadingLabel="Loading payment sessions" isEmpty={(page) => page.items.length === 0} empty={<Empty title={emptyTitle} />}>
      {(page) => (
        <>
          <div className="table-wrap" aria-busy={query.isFetching}>
            <table data-testid={testId}>
              <caption className="visually-hidden">{caption}</caption>
              <thead>
                <tr>
                  <th scope="col">Created</th>
                  <th scope="col">User</th>
                  <th scope="col">Tenant</th>
                  <th scope="col" className="num">
                    Amount
                  </th>
                  <th scope="col">Status</th>
                  <th scope="col">Failure reason</th>
                  <th scope="col">Stripe session</th>
                  <th scope="col">Ledger entry</th>
                </tr>
              </thead>
              <tbody>
                {page.items.map((session) => (
                  <tr key={session.id} data-session-id={session.id} data-status={session.status}>
                    <td>{formatDateTime(session.created_at)}</td>
                    <td>
                      <Link to={`/admin/users/${encodeURIComponent(session.user_id)}?tenant_id=${encodeURIComponent(session.tenant_id)}`}>
                        <ShortId value={session.user_id} prefix="User" />
                      </Link>
                    </td>
                    <td>
                      <Id value={session.tenant_id} />
                    </td>
                    <td className="num">{formatMoney(session.amount_minor, session.currency)}</td>
                    <td>
                      <StatusBadge status={session.status} />
                    </td>
                    <td>{session.failure_reason || <span className="muted">—</span>}</td>
                    <td>
                      <Id value={session.stripe_session_id} />
                    </td>
                    <td>
                      <Id value={session.ledger_entry_id} />
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
          <Pager pager={pager} nextCursor={page.next_cursor} label={caption} />
        </>
      )}
    </QueryView>
  );
}

function useDebounced<T>(value: T, ms = 400): T {
  const [debounced, setDebounced] = useState(value);
  useEffect(() => {
    const timer = window.setTimeout(() => setDebounced(value), ms);
    return () => window.clearTimeout(timer);
  }, [value, ms]);
  return debounced;
}

export default function PaymentSessionsPage() {
  const [status, setStatus] = useState<SessionStatus | "">("");
  const [tenantInput, setTenantInput] = useState("");
  const tenantId = useDebounced(tenantInput.trim());
  return (
    <Page title="Payment sessions">
      <section className="card" aria-labelledby="reconcile-heading">
        <h2 id="reconcile-heading">Failed to reconcile</h2>
        <p className="muted">
          Stripe confirmed a payment whose amount or currency differs from the session, so nothing was credited. Check
          the payment in Stripe, then credit the account by hand (open the user) or refund the card.
        </p>
        <SessionList
          status="failed_reconcile"
          tenantId=""
          caption="Sessions that failed to reconcile, newest first"
          emptyTitle="No sessions need reconciling"
          testId="failed-reconcile-sessions"
        />
      </section>
      <section className="card" aria-labelledby="all-heading">
        <h2 id="all-heading">All sessions</h2>
        <form className="toolbar" role="search" aria-label="Filter payment sessions" onSubmit={(event) => event.preventDefault()}>
          <SelectField
            label="Status"
            value={status}
            options={[{ value: "", label: "All statuses" }, ...STATUSES]}
            onChange={(value) => setStatus(value as SessionStatus | "")}
          />
          <Field label="Tenant id">
            {(props) => (
              <input {...props} type="search" autoComplete="off" spellCheck={false} value={tenantInput} onChange={(event) => setTenantInput(event.target.value)} />
            )}
          </Field>
        </form>
        <SessionList
          key={`${status}|${tenantId}`}
          status={status}
          tenantId={tenantId}
          caption="Payment sessions, newest first"
          emptyTitle={status || tenantId ? "No sessions match these filters" : "No payment sessions yet"}
          testId="payment-sessions"
        />
      </section>
    </Page>
  );
}
