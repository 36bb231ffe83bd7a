// Operators: one user. Admins see the account and can disable or enable it; admins
// and billing operators can credit or debit the account's balance and refund a
// credit. A billing operator may not read user records (admin only), so the money
// actions work from the user id alone (and the tenant id a link passes along).

import { useId, useState, type FormEvent } from "react";
import { Link, useParams, useSearchParams } from "react-router";
import { useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import type { components } from "../../../shared/api/schema";
import { isOperator, useMe } from "../../../shared/auth/session";
import { useApi } from "../../../shared/data/ApiContext";
import { unwrap } from "../../../shared/data/client";
import { formatDateTime, formatMoney, shortId } from "../../../shared/i18n/format";
import { useAnnounce } from "../../../shared/ui/Announcer";
import { CopyButton } from "../../../shared/ui/CopyButton";
import { Field } from "../../../shared/ui/Field";
import { ConfirmModal, Modal } from "../../../shared/ui/Modal";
import { Page, StatusBadge } from "../../../shared/ui/Page";
import { QueryView } from "../../../shared/ui/states";
import { unwrapWithCorrelation } from "../../finance/forms";
import { DEFAULT_CURRENCIES, amountHint, formatSignedMoney, numbersIn, parseAmount } from "../../finance/money";
import { roleLabel, signInLabel } from "./users";
import { ActionError } from "../../../shared/ui/ActionError";
import { toApiError } from "../../../shared/data/errors";
import { useActionKey } from "../../../shared/data/actionKey";

type User = components["schemas"]["User"];
type LedgerEntry = components["schemas"]["LedgerEntry"];
type RefundRequest = components["schemas"]["RefundRequest"];

const MAX_REASON = 500;

/** A credit an operator may refund. */
interface CreditChoice {
  id: string;
  label: string;
  amount_minor: number;
  currency: string;
}

/** What an action did, kept on the page for the operator's record. */
interface ActionResult {
  key: string;
  summary: string;
  at: string;
  correlationId: string | null;
  status?: string;
  facts: { label: string; value: string; plain?: boolean }[];
}

function accountCurrencyIn(message: string): string | null {
  return /kept in ([A-Z]{3})/.exec(message)?.[1] ?? null;
}

function subjectOf(user: User | undefined, userId: string): string {
  return user ? user.email : `user ${shortId(userId)}`;
}

// ---------------------------------------------------------------------------------
// Credit or debit by hand

type AdjustField = "amount" | "currency" | "reason";

function AdjustBalanceModal({
  open,
  onClose,
  userId,
  subject,
  defaultCurrency,
  onDone,
}: {
  open: boolean;
  onClose: () => void;
  userId: string;
  subject: string;
  defaultCurrency: string;
  onDone: (entry: LedgerEntry, correlationId: string | null) => void;
}) {
  const api = useApi();
  const keys = useActionKey();
  const formId = useId();
  const [amount, setAmount] = useState("");
  const [direction, setDirection] = useState<"credit" | "debit">("credit");
  const [currency, setCurrency] = useState(defaultCurrency);
  const [reason, setReason] = useState("");
  const [errors, setErrors] = useState<Partial<Record<AdjustField, string>>>({});
  const currencies = Array.from(new Set([defaultCurrency, ...DEFAULT_CURRENCIES]));

  const adjust = useMutation({
    mutationFn: (body: { amount_minor: number; currency: string; reason: string }) =>
      unwrapWithCorrelation(
        api.POST("/api/v1/admin/users/{user_id}/balance", {
          params: { path: { user_id: userId } },
          body,
          headers: { "X-Idempotency-Key": keys.keyFor(JSON.stringify(body)) },
        }),
      ),
    onSuccess: ({ data, correlationId }) => {
      keys.reset();
      setAmount("");
      setReason("");
      setDirection("credit");
      setErrors({});
      onDone(data, correlationId);
    },
    onError: (caught) => {
      const error = toApiError(caught);
      if (error.code === "currency_mismatch" || error.field === "currency") {
        const kept = accountCurrencyIn(error.message);
        setErrors({
          currency: kept ? `This account is kept in ${kept}; choose ${kept}.` : error.message,
        });
      } else if (error.field === "amount_minor") {
        setErrors({ amount: error.message });
      } else if (error.field === "reason") {
        setErrors({ reason: `Give a reason of 1 to ${MAX_REASON} characters.` });
      }
    },
  });

  function submit(event: FormEvent) {
    event.preventDefault();
    adjust.reset();
    const next: Partial<Record<AdjustField, string>> = {};
    const minor = parseAmount(amount, currency);
    if (minor === null) next.amount = "Enter an amount such as 25 or 25.50.";
    else if (minor <= 0) next.amount = "Enter an amount greater than zero; choose Debit to take money off.";
    const trimmed = reason.trim();
    if (trimmed === "") next.reason = "Give a reason; it is kept in the audit trail.";
    else if (trimmed.length > MAX_REASON) next.reason = `Keep the reason under ${MAX_REASON} characters.`;
    setErrors(next);
    if (Object.keys(next).length > 0 || minor === null) return;
    adjust.mutate({ amount_minor: direction === "debit" ? -minor : minor, currency, reason: trimmed });
  }

  const error = adjust.error ? toApiError(adjust.error) : null;
  const tied = Object.keys(errors).length > 0;
  return (
    <Modal open={open} title="Credit or adjust balance" onClose={onClose}>
      <form id={formId} onSubmit={submit} noValidate>
        <p className="muted">Adjusts the balance of {subject}'s account. Every adjustment is audited.</p>
        <Field label="Amount" error={errors.amount} hint={amountHint(currency)}>
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
        <Field label="Direction" hint="Credit adds money to the account; debit takes it off.">
          {(props) => (
            <select {...props} name="direction" value={direction} onChange={(event) => setDirection(event.target.value as "credit" | "debit")}>
              <option value="credit">Credit</option>
              <option value="debit">Debit</option>
            </select>
          )}
        </Field>
        <Field label="Currency" error={errors.currency} hint="The account's currency; its first posting sets it.">
          {(props) => (
            <select {...props} name="currency" value={currency} onChange={(event) => setCurrency(event.target.value)}>
              {currencies.map((code) => (
                <option key={code} value={code}>
                  {code}
                </option>
              ))}
            </select>
          )}
        </Field>
        <Field label="Reason" error={errors.reason} hint="Required; kept in the audit trail (for example a ticket number).">
          {(props) => (
            <textarea {...props} name="reason" maxLength={MAX_REASON} value={reason} onChange={(event) => setReason(event.target.value)} />
          )}
        </Field>
        <ActionError error={error} shownAtField={tied} />
      </form>
      <div className="modal-actions">
        <button type="button" className="button" onClick={onClose}>
          Cancel
        </button>
        <button type="submit" form={formId} className="button button-primary" disabled={adjust.isPending} aria-busy={adjust.isPending}>
          {adjust.isPending ? "Applying…" : "Apply adjustment"}
        </button>
      </div>
    </Modal>
  );
}

// ---------------------------------------------------------------------------------
// Refund a credit

const OTHER = "__other__";
type RefundField = "credit" | "amount" | "reason";

function RefundModal({
  open,
  onClose,
  userId,
  subject,
  credits,
  defaultCurrency,
  onDone,
}: {
  open: boolean;
  onClose: () => void;
  userId: string;
  subject: string;
  credits: CreditChoice[];
  defaultCurrency: string;
  onDone: (refund: RefundRequest, correlationId: string | null) => void;
}) {
  const api = useApi();
  const keys = useActionKey();
  const formId = useId();
  const [choice, setChoice] = useState<string>(credits[0]?.id ?? OTHER);
  const [pastedId, setPastedId] = useState("");
  const [amount, setAmount] = useState("");
  const [reason, setReason] = useState("");
  const [errors, setErrors] = useState<Partial<Record<RefundField, string>>>({});
  const chosen = credits.find((credit) => credit.id === choice) ?? null;
  const currency = chosen?.currency ?? defaultCurrency;

  const refund = useMutation({
    mutationFn: (body: { credit_entry_id: string; amount_minor: number; reason: string }) =>
      unwrapWithCorrelation(
        api.POST("/api/v1/admin/users/{user_id}/refunds", {
          params: { path: { user_id: userId } },
          body,
          headers: { "X-Idempotency-Key": keys.keyFor(JSON.stringify(body)) },
        }),
      ),
    onSuccess: ({ data, correlationId }) => {
      keys.reset();
      setAmount("");
      setReason("");
      setPastedId("");
      setErrors({});
      onDone(data, correlationId);
    },
    onError: (caught) => {
      const error = toApiError(caught);
      if (error.code === "refund_window_exceeded") {
        const [days] = numbersIn(error.message);
        setErrors({
          credit:
            days !== undefined
              ? `This credit was posted more than ${days} days ago. Credits can be refunded only within ${days} days of being posted, so this one can no longer be refunded; adjust the balance instead if money must go back.`
              : "This credit is outside the refund window and can no longer be refunded.",
        });
      } else if (error.code === "refund_exceeds_remainder") {
        const [remaining] = numbersIn(error.message);
        setErrors({
          amount:
            remaining === undefined
              ? "That is more than what remains refundable of this credit."
              : remaining <= 0
                ? "Nothing of this credit is left to refund: earlier refunds have used all of it."
                : `Only ${formatMoney(remaining, currency)} of this credit is left to refund (earlier refunds used the rest); enter at most that.`,
        });
      } else if (error.status === 404 && !/user/i.test(error.message)) {
        setErrors({ credit: "No credit with this id belongs to this user's account." });
      } else if (error.field === "credit_entry_id") {
        setErrors({ credit: error.message });
      } else if (error.field === "amount_minor") {
        setErrors({ amount: error.message });
      } else if (error.field === "reason") {
        setErrors({ reason: `Give a reason of 1 to ${MAX_REASON} characters.` });
      }
    },
  });

  function submit(event: FormEvent) {
    event.preventDefault();
    refund.reset();
    const next: Partial<Record<RefundField, string>> = {};
    const creditId = choice === OTHER ? pastedId.trim() : choice;
    if (creditId === "") next.credit = "Enter the ledger entry id of the credit to refund.";
    const minor = parseAmount(amount, currency);
    if (minor === null) next.amount = "Enter an amount such as 10 or 10.50.";
    else if (minor <= 0) next.amount = "Enter an amount greater than zero.";
    else if (chosen && minor > chosen.amount_minor) next.amount = `The credit was ${formatMoney(chosen.amount_minor, chosen.currency)}; refund at most that.`;
    const trimmed = reason.trim();
    if (trimmed === "") next.reason = "Give a reason; it is kept in the audit trail.";
    else if (trimmed.length > MAX_REASON) next.reason = `Keep the reason under ${MAX_REASON} characters.`;
    setErrors(next);
    if (Object.keys(next).length > 0 || minor === null) return;
    refund.mutate({ credit_entry_id: creditId, amount_minor: minor, reason: trimmed });
  }

  const error = refund.error ? toApiError(refund.error) : null;
  const tied = Object.keys(errors).length > 0;
  const words =
    error?.code === "payment_provider_error"
      ? { title: "Stripe did not carry out the refund", advice: "Nothing was refunded. Try again later; if it keeps failing, check the Stripe dashboard." }
      : error?.code === "payments_not_configured"
        ? { title: "Card payments are not configured", advice: "A card top-up is refunded through Stripe, which this installation does not have set up." }
        : error?.status === 404
          ? { title: "This user no longer exists", advice: "Go back to the user list." }
          : {};

  return (
    <Modal open={open} title="Refund a credit" onClose={onClose}>
      <form id={formId} onSubmit={submit} noValidate>
        <p className="muted">
          Refunds a card top-up (through Stripe) or an operator credit of {subject}, within the refund window and never
          more than what remains of that credit.
        </p>
        {credits.length > 0 ? (
          <Field label="Credit to refund" error={choice !== OTHER ? errors.credit : undefined}>
            {(props) => (
              <select {...props} name="credit" value={choice} onChange={(event) => setChoice(event.target.value)}>
                {credits.map((credit) => (
                  <option key={credit.id} value={credit.id}>
                    {credit.label}
                  </option>
                ))}
                <option value={OTHER}>Another credit (enter its ledger entry id)</option>
              </select>
            )}
          </Field>
        ) : null}
        {choice === OTHER ? (
          <Field
            label="Credit entry id"
            error={errors.credit}
            hint="The id of a card top-up or operator credit in this user's ledger."
          >
            {(props) => (
              <input {...props} name="credit_entry_id" autoComplete="off" spellCheck={false} value={pastedId} onChange={(event) => setPastedId(event.target.value)} />
            )}
          </Field>
        ) : null}
        <Field
          label="Amount"
          error={errors.amount}
          hint={
            chosen
              ? `${amountHint(currency)} At most ${formatMoney(chosen.amount_minor, chosen.currency)}, less earlier refunds of this credit.`
              : `${amountHint(currency)} At most what remains of the credit.`
          }
        >
          {(props) => (
            <input {...props} name="amount" inputMode="decimal" autoComplete="off" value={amount} onChange={(event) => setAmount(event.target.value)} />
          )}
        </Field>
        <Field label="Reason" error={errors.reason} hint="Required; kept in the audit trail.">
          {(props) => (
            <textarea {...props} name="reason" maxLength={MAX_REASON} value={reason} onChange={(event) => setReason(event.target.value)} />
          )}
        </Field>
        <ActionError error={error} {...words} shownAtField={tied} />
      </form>
      <div className="modal-actions">
        <button type="button" className="button" onClick={onClose}>
          Cancel
        </button>
        <button type="submit" form={formId} className="button button-primary" disabled={refund.isPending} aria-busy={refund.isPending}>
          {refund.isPending ? "Refunding…" : "Refund"}
        </button>
      </div>
    </Modal>
  );
}

// ---------------------------------------------------------------------------------
// The account: facts, disable / enable

function AccountFacts({ user }: { user: User }) {
  return (
    <dl className="facts">
      <dt>Email</dt>
      <dd data-testid="user-email">{user.email}</dd>
      <dt>Display name</dt>
      <dd>{user.display_name || <span className="muted">—</span>}</dd>
      <dt>Role</dt>
      <dd data-testid="user-role">{roleLabel(user.role)}</dd>
      <dt>Status</dt>
      <dd data-testid="user-status">
        <StatusBadge status={user.status} />
      </dd>
      <dt>Sign-in</dt>
      <dd>{signInLabel(user.identity_source)}</dd>
      <dt>User id</dt>
      <dd>
        <code>{user.id}</code> <CopyButton text={user.id} label="Copy user id" />
      </dd>
      <dt>Tenant id</dt>
      <dd>
        <code data-testid="tenant-id">{user.tenant_id}</code> <CopyButton text={user.tenant_id} label="Copy tenant id" />
      </dd>
      <dt>Created</dt>
      <dd>{formatDateTime(user.created_at)}</dd>
    </dl>
  );
}

function StatusAction({ user }: { user: User }) {
  const api = useApi();
  const announce = useAnnounce();
  const queryClient = useQueryClient();
  const [confirming, setConfirming] = useState(false);
  const disabling = user.status === "active";
  const change = useMutation({
    mutationFn: () =>
      disabling
        ? unwrapWithCorrelation(api.POST("/api/v1/admin/users/{user_id}/disable", { params: { path: { user_id: user.id } } }))
        : unwrapWithCorrelation(api.POST("/api/v1/admin/users/{user_id}/enable", { params: { path: { user_id: user.id } } })),
    onSuccess: ({ data }) => {
      queryClient.setQueryData(["admin", "user", user.id], data);
      void queryClient.invalidateQueries({ queryKey: ["admin", "users"] });
      setConfirming(false);
      announce(data.status === "disabled" ? `${data.email} is disabled` : `${data.email} is enabled`);
    },
  });
  return (
    <>
      <button
        type="button"
        className={disabling ? "button button-danger" : "button"}
        onClick={() => {
          change.reset();
          setConfirming(true);
        }}
      >
        {disabling ? "Disable user" : "Enable user"}
      </button>
      <ConfirmModal
        open={confirming}
        title={disabling ? `Disable ${user.email}?` : `Enable ${user.email}?`}
        confirmLabel={disabling ? "Disable" : "Enable"}
        danger={disabling}
        busy={change.isPending}
        onConfirm={() => change.mutate()}
        onClose={() => setConfirming(false)}
      >
        <p>
          {disabling
            ? "Their sessions end at once: refresh tokens are revoked and access tokens stop working. They cannot sign in until enabled again. Running allocations are not released."
            : "They can sign in and use the API again."}
        </p>
        {change.error ? <ActionError error={change.error} /> : null}
      </ConfirmModal>
    </>
  );
}

// ---------------------------------------------------------------------------------

export default function UserDetailPage() {
  const { userId = "" } = useParams();
  const [search] = useSearchParams();
  const api = useApi();
  const me = useMe();
  const admin = isOperator(me);
  const announce = useAnnounce();
  const [adjusting, setAdjusting] = useState(false);
  const [refunding, setRefunding] = useState(false);
  const [results, setResults] = useState<ActionResult[]>([]);
  const [operatorCredits, setOperatorCredits] = useState<CreditChoice[]>([]);

  const userQuery = useQuery({
    queryKey: ["admin", "user", userId],
    queryFn: () => unwrap(api.GET("/api/v1/admin/users/{user_id}", { params: { path: { user_id: userId } } })),
    enabled: admin && userId !== "",
  });
  const user = userQuery.data;
  const tenantId = user?.tenant_id ?? search.get("tenant_id");

  // Card top-ups of this tenant that were credited: the credits a refund can pick.
  const sessions = useQuery({
    queryKey: ["admin", "payments", "sessions", "credited", tenantId],
    queryFn: () =>
      unwrap(
        api.GET("/api/v1/admin/payments/sessions", {
          params: { query: { tenant_id: tenantId ?? undefined, status: "credited", limit: 50 } },
        }),
      ),
    enabled: tenantId !== null && tenantId !== "",
  });
  const cardCredits: CreditChoice[] = (sessions.data?.items ?? [])
    .filter((session) => session.ledger_entry_id)
    .map((session) => ({
      id: session.ledger_entry_id as string,
      amount_minor: session.amount_minor,
      currency: session.currency,
      label: `Card top-up of ${formatMoney(session.amount_minor, session.currency)} on ${formatDateTime(session.created_at)}`,
    }));
  const credits = [...operatorCredits, ...cardCredits];
  const defaultCurrency = sessions.data?.items[0]?.currency ?? DEFAULT_CURRENCIES[0];
  const subject = subjectOf(user, userId);
  // An admin acts once the user is known to exist; a billing operator cannot read it.
  const showMoney = admin ? user !== undefined : userId !== "";

  function record(result: Omit<ActionResult, "key" | "at">) {
    setResults((all) => [{ ...result, key: crypto.randomUUID(), at: new Date().toISOString() }, ...all]);
  }

  return (
    <Page title={user ? user.email : "User"} actions={admin && user ? <StatusAction user={user} /> : undefined}>
      <p>
        <Link to={admin ? "/admin/users" : "/admin/payments"}>{admin ? "All users" : "Payment sessions"}</Link>
      </p>
      <section className="card" aria-labelledby="account-heading">
        <h2 id="account-heading">Account</h2>
        {admin ? (
          <QueryView query={userQuery} loadingLabel="Loading user">
            {(loaded) => <AccountFacts user={loaded} />}
          </QueryView>
        ) : (
          <>
            <p className="notice">
              User records are visible to administrators only. You can still credit, debit or refund this account.
            </p>
            <dl className="facts">
              <dt>User id</dt>
              <dd>
                <code>{userId}</code>
              </dd>
              {tenantId ? (
                <>
                  <dt>Tenant id</dt>
                  <dd>
                    <code data-testid="tenant-id">{tenantId}</code>
                  </dd>
                </>
              ) : null}
            </dl>
          </>
        )}
      </section>
      {!showMoney ? null : (
        <section className="card" aria-labelledby="money-heading">
          <h2 id="money-heading">Balance and refunds</h2>
          <p className="muted">
            Credit or debit the account by hand, or refund a card top-up or operator credit. Each action is audited with
            its reason.
          </p>
          <div className="toolbar">
            <button type="button" className="button button-primary" onClick={() => setAdjusting(true)}>
              Credit or adjust balance
            </button>
            <button type="button" className="button" onClick={() => setRefunding(true)}>
              Refund a credit
            </button>
          </div>
          {sessions.error ? (
            <p className="warning">
              The card top-ups of this account could not be listed ({toApiError(sessions.error).message}); you can still
              refund by pasting a credit entry id.
            </p>
          ) : null}
          {results.length > 0 ? (
            <>
              <h3>Done in this visit</h3>
              <ul className="timeline" aria-label="Results of your actions, newest first">
                {results.map((result) => (
                  <li key={result.key} data-testid="action-result">
                    <p>
                      <strong>{result.summary}</strong> {result.status ? <StatusBadge status={result.status} /> : null}
                      <br />
                      <span className="muted">{formatDateTime(result.at)}</span>
                    </p>
                    <dl className="facts">
                      {result.facts.map((fact) => (
                        <FactRow key={fact.label} label={fact.label} value={fact.value} plain={fact.plain} />
                      ))}
                      {result.correlationId ? (
                        <FactRow label="Correlation id" value={result.correlationId} />
                      ) : null}
                    </dl>
                  </li>
                ))}
              </ul>
            </>
          ) : null}
        </section>
      )}
      {adjusting ? (
        <AdjustBalanceModal
          open={adjusting}
          onClose={() => setAdjusting(false)}
          userId={userId}
          subject={subject}
          defaultCurrency={defaultCurrency}
          onDone={(entry, correlationId) => {
            setAdjusting(false);
            const verb = entry.amount_minor > 0 ? "Credited" : "Debited";
            const summary = `${verb} ${formatMoney(Math.abs(entry.amount_minor), entry.currency)} ${entry.amount_minor > 0 ? "to" : "from"} ${subject}`;
            record({
              summary,
              correlationId: correlationId ?? entry.correlation_id,
              facts: [
                { label: "Amount", value: formatSignedMoney(entry.amount_minor, entry.currency) },
                { label: "Ledger entry", value: `#${entry.entry_no} (${entry.id})` },
                { label: "Reason", value: entry.description ?? "", plain: true },
              ],
            });
            if (entry.amount_minor > 0) {
              setOperatorCredits((all) => [
                {
                  id: entry.id,
                  amount_minor: entry.amount_minor,
                  currency: entry.currency,
                  label: `Operator credit of ${formatMoney(entry.amount_minor, entry.currency)} on ${formatDateTime(entry.created_at)} (this visit)`,
                },
                ...all,
              ]);
            }
            announce(`${summary}; ledger entry ${entry.entry_no}`);
          }}
        />
      ) : null}
      {refunding ? (
        <RefundModal
          open={refunding}
          onClose={() => setRefunding(false)}
          userId={userId}
          subject={subject}
          credits={credits}
          defaultCurrency={defaultCurrency}
          onDone={(refund, correlationId) => {
            setRefunding(false);
            const summary = `Refund of ${formatMoney(refund.amount_minor, refund.currency)} for ${subject}: ${refund.status}`;
            const facts: ActionResult["facts"] = [
              { label: "Refund id", value: refund.id },
              { label: "Credit entry", value: refund.credit_entry_id },
            ];
            if (refund.ledger_entry_id) facts.push({ label: "Ledger entry", value: refund.ledger_entry_id });
            if (refund.stripe_refund_id) facts.push({ label: "Stripe refund", value: refund.stripe_refund_id });
            if (refund.failure_reason) facts.push({ label: "Failure", value: refund.failure_reason });
            record({ summary, status: refund.status, correlationId, facts });
            void sessions.refetch();
            announce(summary);
          }}
        />
      ) : null}
    </Page>
  );
}

function FactRow({ label, value, plain }: { label: string; value: string; plain?: boolean }) {
  return (
    <>
      <dt>{label}</dt>
      <dd>{plain ? value : <code>{value}</code>}</dd>
    </>
  );
}
