// Where Stripe Checkout sends the customer back: /billing/top-up/success?session_id=…
// or /billing/top-up/cancelled. The credit lands only when Stripe's webhook confirms
// the payment, so the success page watches the ledger for it for about a minute.

import { useEffect, useRef, useState } from "react";
import { Link, useParams } from "react-router";
import { useQuery, useQueryClient } from "@tanstack/react-query";
import { useApi } from "../../shared/data/ApiContext";
import { unwrap } from "../../shared/data/client";
import { ApiError } from "../../shared/data/errors";
import { formatDateTime, formatMoney } from "../../shared/i18n/format";
import { useAnnounce } from "../../shared/ui/Announcer";
import { Page } from "../../shared/ui/Page";
import { ErrorPanel, Loading } from "../../shared/ui/states";
import { balanceText, useBalance } from "./balance";
import type { LedgerEntry } from "./money";

const POLL_MS = 2000;
const WAIT_MS = 60_000;
/** Without a session id, a card credit this recent counts as the one just paid. */
const RECENT_MS = 10 * 60_000;

/** Reads `session_id` once and removes it from the address bar. */
function useCheckoutSessionId(): string | null {
  const [sessionId] = useState<string | null>(() => {
    const value = new URLSearchParams(window.location.search).get("session_id");
    return value && value.length <= 255 ? value : null;
  });
  useEffect(() => {
    const url = new URL(window.location.href);
    if (!url.searchParams.has("session_id")) return;
    url.searchParams.delete("session_id");
    window.history.replaceState(window.history.state, "", `${url.pathname}${url.search}${url.hash}`);
  }, []);
  return sessionId;
}

/** The credit of this checkout: by Stripe's session id when known, else a recent one. */
export function findCredit(entries: LedgerEntry[], sessionId: string | null, since: number): LedgerEntry | null {
  for (const entry of entries) {
    if (entry.entry_type !== "credit_purchase") continue;
    if (sessionId !== null) {
      if (entry.idempotency_key === `stripe:${sessionId}` || (entry.description ?? "").includes(sessionId)) return entry;
    } else if (Date.parse(entry.created_at) >= since - RECENT_MS) {
      return entry;
    }
  }
  return null;
}

function SuccessView() {
  const api = useApi();
  const announce = useAnnounce();
  const queryClient = useQueryClient();
  const sessionId = useCheckoutSessionId();
  const [since] = useState(() => Date.now());
  const [waitStarted, setWaitStarted] = useState(() => Date.now());
  const [timedOut, setTimedOut] = useState(false);
  const [credit, setCredit] = useState<LedgerEntry | null>(null);
  const announced = useRef(false);
  const waiting = credit === null && !timedOut;

  useEffect(() => {
    if (!waiting) return undefined;
    const timer = window.setTimeout(() => setTimedOut(true), Math.max(0, waitStarted + WAIT_MS - Date.now()));
    return () => window.clearTimeout(timer);
  }, [waiting, waitStarted]);

  const ledger = useQuery({
    queryKey: ["billing", "top-up-credit", sessionId],
    queryFn: () =>
      unwrap(api.GET("/api/v1/billing/ledger", { params: { query: { type: "credit_purchase", limit: 20 } } })),
    refetchInterval: waiting ? POLL_MS : false,
    staleTime: 0,
  });
  const balance = useBalance(waiting ? POLL_MS : false);

  useEffect(() => {
    if (credit !== null || ledger.data === undefined) return;
    const found = findCredit(ledger.data.items, sessionId, since);
    if (found !== null) setCredit(found);
  }, [ledger.data, credit, sessionId, since]);

  useEffect(() => {
    if (credit === null || announced.current) return;
    announced.current = true;
    void queryClient.invalidateQueries({ queryKey: ["billing"] });
    announce(`Payment confirmed: ${formatMoney(credit.amount_minor, credit.currency)} added to your balance`);
  }, [credit, announce, queryClient]);

  useEffect(() => {
    if (timedOut && credit === null) announce("The payment is not confirmed yet");
  }, [timedOut, credit, announce]);

  return (
    <Page title="Payment received">
      <p className="notice">Payment received; your balance updates when the payment is confirmed.</p>
      {credit !== null ? (
        <section className="card" aria-labelledby="credit-heading" data-testid="top-up-confirmed">
          <h2 id="credit-heading">Payment confirmed</h2>
          <dl className="facts">
            <dt>Credited</dt>
            <dd data-testid="credited-amount">{formatMoney(credit.amount_minor, credit.currency)}</dd>
            <dt>Ledger entry</dt>
            <dd>#{credit.entry_no}</dd>
            <dt>Time</dt>
            <dd>{formatDateTime(credit.created_at)}</dd>
            {credit.description ? (
              <>
                <dt>Description</dt>
                <dd>{credit.description}</dd>
              </>
            ) : null}
            <dt>Balance now</dt>
            <dd data-testid="balance">{balance.data ? balanceText(balance.data) : "…"}</dd>
          </dl>
        </section>
      ) : timedOut ? (
        <div className="warning" role="status">
          <p>
            We have not seen the payment confirmed yet. Stripe usually confirms within seconds but it can take longer;
            your balance is credited as soon as the confirmation arrives. Nothing is charged twice.
          </p>
          <button
            type="button"
            className="button"
            onClick={() => {
              setTimedOut(false);
              setWaitStarted(Date.now());
              void ledger.refetch();
            }}
          >
            Check again
          </button>
        </div>
      ) : (
        <Loading label="Waiting for the payment to be confirmed" />
      )}
      {ledger.error && credit === null ? <ErrorPanel error={ledger.error} onRetry={() => void ledger.refetch()} /> : null}
      {credit === null && balance.data ? (
        <p>
          Current balance: <strong data-testid="balance">{balanceText(balance.data)}</strong>
        </p>
      ) : null}
      <p>
        <Link to="/billing">Back to Billing</Link>
      </p>
    </Page>
  );
}

function CancelledView() {
  return (
    <Page title="Top-up cancelled">
      <p data-testid="top-up-cancelled">Top-up cancelled, nothing was charged.</p>
      <p>
        <Link to="/billing">Back to Billing</Link>
      </p>
    </Page>
  );
}

export default function CheckoutReturnPage() {
  const { outcome } = useParams();
  if (outcome === "success") return <SuccessView />;
  if (outcome === "cancelled") return <CancelledView />;
  return (
    <Page title="Page not found">
      <ErrorPanel error={new ApiError({ status: 404, code: "route_not_found", message: "No page at this address." })} />
    </Page>
  );
}
