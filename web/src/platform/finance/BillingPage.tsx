// Billing: the tenant's balance, a card top-up through Stripe Checkout, daily spend,
// the ledger and the usage records (with a CSV export).

import { useState, type FormEvent } from "react";
import { Link } from "react-router";
import { keepPreviousData, useMutation, useQuery } from "@tanstack/react-query";
import { useApi, useApiContext } from "../../shared/data/ApiContext";
import { unwrap } from "../../shared/data/client";
import { ApiError } from "../../shared/data/errors";
import { downloadExport } from "../../shared/data/download";
import { formatDateTime, formatDuration, formatMoney } from "../../shared/i18n/format";
import { useAnnounce } from "../../shared/ui/Announcer";
import { Field, SelectField } from "../../shared/ui/Field";
import { Page } from "../../shared/ui/Page";
import { Pager, useCursorPager } from "../../shared/ui/Pager";
import { Empty, ErrorPanel, Loading, QueryView } from "../../shared/ui/states";
import { ShortId } from "./forms";
import {
  DEFAULT_CURRENCIES,
  ENTRY_TYPES,
  ENTRY_TYPE_LABELS,
  amountHint,
  formatSignedMoney,
  numbersIn,
  parseAmount,
  type EntryType,
} from "./money";
import { SpendChart } from "./SpendChart";
import { balanceText, useBalance } from "./balance";
import { ActionError } from "../../shared/ui/ActionError";
import { toApiError } from "../../shared/data/errors";
import { useActionKey } from "../../shared/data/actionKey";

const PAGE_LIMIT = 50;

function BalanceCard({ query }: { query: ReturnType<typeof useBalance> }) {
  return (
    <div className="cards">
      <section className="card" aria-labelledby="balance-label">
        <h2 id="balance-label" className="stat-label">
          Balance
        </h2>
        <QueryView query={query} loadingLabel="Loading balance">
          {(balance) => (
            <>
              <p className="stat" data-testid="balance">
                {balanceText(balance)}
              </p>
              {balance.currency === null || balance.currency === undefined ? (
                <p className="muted">No payments or charges yet.</p>
              ) : (
                <p className="muted">Kept in {balance.currency}; the sum of the ledger below.</p>
              )}
            </>
          )}
        </QueryView>
      </section>
    </div>
  );
}

function safeHttpUrl(text: string): string | null {
  try {
    const url = new URL(text, window.location.href);
    return url.protocol === "https:" || url.protocol === "http:" ? url.href : null;
  } catch {
    return null;
  }
}

const NOT_CONFIGURED = "Card top-ups are not enabled on this installation; ask an operator to credit your account";

function TopUpForm({ accountCurrency }: { accountCurrency: string | null }) {
  const api = useApi();
  const announce = useAnnounce();
  const keys = useActionKey();
  const [amount, setAmount] = useState("");
  const [chosenCurrency, setChosenCurrency] = useState<string>(DEFAULT_CURRENCIES[0]);
  const [amountError, setAmountError] = useState<string | null>(null);
  const [currencyError, setCurrencyError] = useState<string | null>(null);
  const [notConfigured, setNotConfigured] = useState(false);
  /** The bounds the server told us about, to check before asking again. */
  const [range, setRange] = useState<{ min: number; max: number } | null>(null);
  const currency = accountCurrency ?? chosenCurrency;

  const checkout = useMutation({
    mutationFn: async (body: { amount_minor: number; currency: string }) => {
      const session = await unwrap(
        api.POST("/api/v1/payments/checkout-session", {
          body,
          headers: { "X-Idempotency-Key": keys.keyFor(JSON.stringify(body)) },
        }),
      );
      // Only ever navigate to a web page (Stripe Checkout), never a script URL.
      const target = safeHttpUrl(session.url);
      if (target === null) {
        throw new ApiError({
          status: -1,
          code: "client_error",
          message: "The payment provider answered with an address the portal will not open.",
        });
      }
      return target;
    },
    onSuccess: (target) => {
      keys.reset();
      announce("Opening the payment page");
      window.location.assign(target);
    },
    onError: (caught) => {
      const error = toApiError(caught);
      if (error.code === "payments_not_configured") {
        setNotConfigured(true);
        return;
      }
      if (error.code === "payment_amount_out_of_range") {
        const [min, max] = numbersIn(error.message);
        if (min !== undefined && max !== undefined) {
          setRange({ min, max });
          setAmountError(`Top-ups must be between ${formatMoney(min, currency)} and ${formatMoney(max, currency)}.`);
        } else {
          setAmountError(error.message);
        }
        return;
      }
      if (error.code === "currency_mismatch" || error.field === "currency") {
        setCurrencyError(error.message);
        return;
      }
      if (error.field === "amount_minor") setAmountError(error.message);
    },
  });

  function submit(event: FormEvent) {
    event.preventDefault();
    setAmountError(null);
    setCurrencyError(null);
    checkout.reset();
    const minor = parseAmount(amount, currency);
    if (minor === null) {
      setAmountError(`Enter an amount such as 20 or 20.50.`);
      return;
    }
    if (minor <= 0) {
      setAmountError("Enter an amount greater than zero.");
      return;
    }
    if (range && (minor < range.min || minor > range.max)) {
      setAmountError(`Top-ups must be between ${formatMoney(range.min, currency)} and ${formatMoney(range.max, currency)}.`);
      return;
    }
    checkout.mutate({ amount_minor: minor, currency });
  }

  const error = checkout.error ? toApiError(checkout.error) : null;
  const handled = error !== null && (error.code === "payments_not_configured" || amountError !== null || currencyError !== null);
  const redirecting = checkout.isSuccess;

  return (
    <form onSubmit={submit} noValidate aria-describedby="top-up-about">
      <p id="top-up-about" className="muted">
        Pay by card through Stripe. Your balance is credited once Stripe confirms the payment.
      </p>
      {notConfigured ? (
        <p className="warning" role="alert" data-testid="payments-not-configured">
          {NOT_CONFIGURED}.
        </p>
      ) : null}
      <div className="toolbar">
        <Field label="Amount" error={amountError} hint={amountHint(currency)}>
          {(props) => (
            <input
              {...props}
              name="amount"
              inputMode="decimal"
              autoComplete="off"
              value={amount}
              onChange={(event) => setAmount(event.target.value)}
            />
          )}
        </Field>
        {accountCurrency ? null : (
          <Field label="Currency" error={currencyError}>
            {(props) => (
              <select {...props} value={chosenCurrency} onChange={(event) => setChosenCurrency(event.target.value)}>
                {DEFAULT_CURRENCIES.map((code) => (
                  <option key={code} value={code}>
                    {code}
                  </option>
                ))}
              </select>
            )}
          </Field>
        )}
        <div className="field">
          <button
            type="submit"
            className="button button-primary"
            disabled={checkout.isPending || redirecting}
            aria-busy={checkout.isPending || redirecting}
          >
            {checkout.isPending ? "Starting checkout…" : redirecting ? "Opening payment page…" : "Continue to payment"}
          </button>
        </div>
      </div>
      {accountCurrency && currencyError ? (
        <p className="field-error" role="alert">
          {currencyError}
        </p>
      ) : null}
      {error && !handled ? <ActionError error={error} /> : null}
      {error && handled && error.code !== "payments_not_configured" && error.correlationId ? (
        <p className="correlation">
          Correlation id: <code data-testid="correlation-id">{error.correlationId}</code>
        </p>
      ) : null}
      {redirecting ? (
        <p className="notice" role="status">
          Taking you to the payment page…
        </p>
      ) : null}
    </form>
  );
}

function LedgerSection() {
  const api = useApi();
  const pager = useCursorPager();
  const [type, setType] = useState<EntryType | "">("");
  const query = useQuery({
    queryKey: ["billing", "ledger", type, pager.cursor],
    queryFn: () =>
      unwrap(
        api.GET("/api/v1/billing/ledger", {
          params: { query: { limit: PAGE_LIMIT, cursor: pager.cursor ?? undefined, type: type || undefined } },
        }),
      ),
    placeholderData: keepPreviousData,
  });
  return (
    <section className="card" aria-labelledby="ledger-heading">
      <h2 id="ledger-heading">Ledger</h2>
      <div className="toolbar">
        <SelectField
          label="Entry type"
          value={type}
          options={[{ value: "", label: "All entries" }, ...ENTRY_TYPES.map((entryType) => ({ value: entryType, label: ENTRY_TYPE_LABELS[entryType] }))]}
          onChange={(value) => {
            setType(value as EntryType | "");
            pager.reset();
          }}
        />
      </div>
      <QueryView
        query={query}
        loadingLabel="Loading ledger"
        isEmpty={(page) => page.items.length === 0}
        empty={
          <Empty title={type ? "No entries of this type" : "No ledger entries yet"}>
            <p className="muted">Top-ups, usage charges and operator credits appear here.</p>
          </Empty>
        }
      >
        {(page) => (
          <>
            <div className="table-wrap" aria-busy={query.isFetching}>
              <table data-testid="ledger-table">
                <caption className="visually-hidden">Ledger entries, newest first</caption>
                <thead>
                  <tr>
                    <th scope="col">Entry</th>
                    <th scope="col">Time</th>
                    <th scope="col">Type</th>
                    <th scope="col">Description</th>
                    <th scope="col" className="num">
                      Amount
                    </th>
                    <th scope="col">Reference</th>
                  </tr>
                </thead>
                <tbody>
                  {page.items.map((entry) => (
                    <tr key={entry.id} data-entry-id={entry.id} data-entry-type={entry.entry_type}>
                      <td>#{entry.entry_no}</td>
                      <td>{formatDateTime(entry.created_at)}</td>
                      <td>{ENTRY_TYPE_LABELS[entry.entry_type] ?? entry.entry_type}</td>
                      <td>{entry.description || <span className="muted">—</span>}</td>
                      <td className="num">{formatSignedMoney(entry.amount_minor, entry.currency)}</td>
                      <td>
                        {entry.reference_type.replace(/_/g, " ")} <ShortId value={entry.reference_id} />
                      </td>
                    </tr>
                  ))}
                </tbody>
              </table>
            </div>
            <Pager pager={pager} nextCursor={page.next_cursor} label="Ledger" />
          </>
        )}
      </QueryView>
    </section>
  );
}

/** SKU names by id, so usage rows read "H100 80GB x8" rather than an id. */
function useSkuNames(): Map<string, string> {
  const api = useApi();
  const skus = useQuery({
    queryKey: ["skus"],
    queryFn: () => unwrap(api.GET("/api/v1/skus")),
    staleTime: 60_000,
  });
  return new Map((skus.data?.items ?? []).map((sku) => [sku.id, sku.display_name || sku.name]));
}

function UsageSection() {
  const skuNames = useSkuNames();
  const api = useApi();
  const { authFetch } = useApiContext();
  const announce = useAnnounce();
  const pager = useCursorPager();
  const query = useQuery({
    queryKey: ["billing", "usage", pager.cursor],
    queryFn: () =>
      unwrap(api.GET("/api/v1/billing/usage", { params: { query: { limit: PAGE_LIMIT, cursor: pager.cursor ?? undefined } } })),
    placeholderData: keepPreviousData,
  });
  const exportCsv = useMutation({
    mutationFn: () => downloadExport(authFetch, "/api/v1/billing/usage/csv", "usage.csv"),
    onSuccess: () => announce("Usage exported as usage.csv"),
  });
  return (
    <section className="card" aria-labelledby="usage-heading">
      <h2 id="usage-heading">Usage</h2>
      <div className="toolbar">
        <button
          type="button"
          className="button"
          onClick={() => exportCsv.mutate()}
          disabled={exportCsv.isPending}
          aria-busy={exportCsv.isPending}
        >
          {exportCsv.isPending ? "Exporting…" : "Export usage as CSV"}
        </button>
      </div>
      {exportCsv.error ? <ActionError error={exportCsv.error} /> : null}
      <QueryView
        query={query}
        loadingLabel="Loading usage"
        isEmpty={(page) => page.items.length === 0}
        empty={
          <Empty title="No usage yet">
            <p className="muted">
              Each allocation gets a usage record once it starts. <Link to="/allocations/new">Create an allocation</Link>.
            </p>
          </Empty>
        }
      >
        {(page) => (
          <>
            <div className="table-wrap" aria-busy={query.isFetching}>
              <table data-testid="usage-table">
                <caption className="visually-hidden">Usage records, newest first</caption>
                <thead>
                  <tr>
                    <th scope="col">Allocation</th>
                    <th scope="col">SKU</th>
                    <th scope="col" className="num">
                      GPUs
                    </th>
                    <th scope="col">Started</th>
                    <th scope="col">Ended</th>
                    <th scope="col" className="num">
                      Billed time
                    </th>
                    <th scope="col" className="num">
                      Billed
                    </th>
                  </tr>
                </thead>
                <tbody>
                  {page.items.map((record) => (
                    <tr key={record.id}>
                      <td>
                        <Link to={`/allocations/${encodeURIComponent(record.allocation_id)}`}>
                          <ShortId value={record.allocation_id} prefix="Allocation" />
                        </Link>
                      </td>
                      <td>{skuNames.get(record.sku_id) ?? <ShortId value={record.sku_id} prefix="SKU" />}</td>
                      <td className="num">{record.gpu_count}</td>
                      <td>{formatDateTime(record.started_at)}</td>
                      <td>{record.ended_at ? formatDateTime(record.ended_at) : "running"}</td>
                      <td className="num">{formatDuration(record.billed_seconds)}</td>
                      <td className="num">{formatMoney(record.billed_minor, record.currency)}</td>
                    </tr>
                  ))}
                </tbody>
              </table>
            </div>
            <Pager pager={pager} nextCursor={page.next_cursor} label="Usage" />
          </>
        )}
      </QueryView>
    </section>
  );
}

export default function BillingPage() {
  const balance = useBalance();
  const accountCurrency = balance.data?.currency ?? null;
  return (
    <Page title="Billing">
      <BalanceCard query={balance} />
      <section className="card" aria-labelledby="top-up-heading">
        <h2 id="top-up-heading">Top up</h2>
        {balance.isPending ? (
          <Loading label="Loading balance" />
        ) : balance.error && balance.data === undefined ? (
          <ErrorPanel error={balance.error} onRetry={() => void balance.refetch()} />
        ) : (
          <TopUpForm accountCurrency={accountCurrency} />
        )}
      </section>
      <section className="card" aria-labelledby="spend-heading">
        <h2 id="spend-heading">Spend over time</h2>
        <SpendChart fallbackCurrency={accountCurrency} />
      </section>
      <LedgerSection />
      <UsageSection />
    </Page>
  );
}
