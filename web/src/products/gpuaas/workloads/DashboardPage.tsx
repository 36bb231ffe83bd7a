import { Link } from "react-router";
import { formatDuration, formatMoney } from "../../../shared/i18n/format";
import { AllocationTable } from "./allocation/AllocationTable";
import { Page } from "../../../shared/ui/Page";
import { Empty, ErrorPanel, Loading, QueryView } from "../../../shared/ui/states";
import { skuIndex, useSkus } from "../compute/catalog";
import {
  allocationLabel,
  balanceLevel,
  burnRatePerHour,
  secondsLeft,
  type Allocation,
  type Balance,
} from "./allocation/model";
import { useBalance, useLiveAllocations } from "./allocation/queries";

const REFRESH_MS = 10_000;
const DEFAULT_CURRENCY = "USD";

function BalanceWarning({ balance, currency, burn, left }: { balance: number; currency: string; burn: number; left: number | null }) {
  const level = balanceLevel(balance, burn);
  if (level === "ok") return null;
  return (
    <section className="warning card" aria-labelledby="balance-warning-title" data-testid="balance-warning" data-level={level}>
      <h2 id="balance-warning-title">{level === "empty" ? "Your balance is used up" : "Your balance is running low"}</h2>
      {level === "empty" ? (
        <p>
          Your balance is {formatMoney(balance, currency)}. New allocations are refused until you add credit
          {burn > 0 ? ", and running allocations keep adding charges" : ""}.
        </p>
      ) : (
        <p>
          At the current rate of {formatMoney(burn, currency)} per hour, your balance lasts about{" "}
          {formatDuration(left ?? 0)}.
        </p>
      )}
      <p>
        <Link to="/billing">Top up in Billing</Link>
        {burn > 0 ? (
          <>
            {" "}
            or <Link to="/allocations?status=active">release allocations you no longer need</Link>
          </>
        ) : null}
        .
      </p>
    </section>
  );
}

function Stat({ label, value, testId, note }: { label: string; value: string; testId: string; note?: string }) {
  return (
    <div className="card">
      <p className="stat-label">{label}</p>
      <p className="stat" data-testid={testId}>
        {value}
      </p>
      {note ? <p className="muted">{note}</p> : null}
    </div>
  );
}

function Summary({ balance, live }: { balance: Balance; live: Allocation[] | undefined }) {
  const currency = balance.currency ?? live?.[0]?.currency ?? DEFAULT_CURRENCY;
  // Amounts in another currency than the balance cannot be compared with it.
  const comparable = (live ?? []).filter((a) => a.currency.toUpperCase() === currency.toUpperCase());
  const burn = burnRatePerHour(comparable);
  const left = secondsLeft(balance.amount_minor, burn);
  const known = live !== undefined;
  return (
    <>
      {known ? <BalanceWarning balance={balance.amount_minor} currency={currency} burn={burn} left={left} /> : null}
      <div className="cards">
        <Stat
          label="Balance"
          value={formatMoney(balance.amount_minor, currency)}
          testId="balance"
          note={balance.currency === null || balance.currency === undefined ? "No credit added yet." : undefined}
        />
        <Stat
          label="Burn rate"
          value={known ? `${formatMoney(burn, currency)} / hour` : "—"}
          testId="burn-rate"
          note={
            !known
              ? "Unknown: allocations could not be read."
              : burn > 0
                ? `${comparable.length} allocation${comparable.length === 1 ? "" : "s"} holding GPUs`
                : "Nothing is running."
          }
        />
        <Stat
          label="Time left at this rate"
          value={left === null ? "—" : formatDuration(left)}
          testId="time-left"
          note={known && left === null ? "Nothing is being billed." : undefined}
        />
      </div>
    </>
  );
}

export default function DashboardPage() {
  const balance = useBalance(REFRESH_MS);
  const allocations = useLiveAllocations(REFRESH_MS);
  const skus = useSkus();
  const index = skuIndex(skus.data?.items ?? []);
  const skuName = (id: string) => index.get(id)?.display_name ?? id;

  return (
    <Page
      title="Dashboard"
      actions={
        <>
          <Link className="button button-primary" to="/allocations/new">
            Create allocation
          </Link>
          <Link className="button" to="/billing">
            Top up
          </Link>
        </>
      }
    >
      {balance.data === undefined && balance.error ? (
        <ErrorPanel error={balance.error} onRetry={() => void balance.refetch()} />
      ) : balance.data === undefined || allocations.isPending ? (
        <Loading label="Loading balance" />
      ) : (
        <Summary balance={balance.data} live={allocations.data?.live} />
      )}

      {allocations.data && allocations.data.releaseFailed.length > 0 ? (
        <section className="warning card" aria-labelledby="release-failed-title" data-testid="release-failed">
          <h2 id="release-failed-title">Releases that need attention</h2>
          <p>
            These allocations could not be released. They are no longer billed; open one and choose “Retry release”,
            or ask an operator.
          </p>
          <ul>
            {allocations.data.releaseFailed.map((a) => (
              <li key={a.id}>
                <Link to={`/allocations/${encodeURIComponent(a.id)}`}>{allocationLabel(a)}</Link>
                {a.failure_reason ? <span className="muted"> — {a.failure_reason}</span> : null}
              </li>
            ))}
          </ul>
        </section>
      ) : null}

      <section className="card" aria-labelledby="running-title">
        <h2 id="running-title">Running allocations</h2>
        <QueryView
          query={allocations}
          loadingLabel="Loading allocations"
          isEmpty={(data) => data.live.length === 0}
          empty={
            <Empty title="Nothing is running">
              <p>
                See what is free on the <Link to="/capacity">Capacity</Link> page, then{" "}
                <Link to="/allocations/new">create an allocation</Link>.
              </p>
            </Empty>
          }
        >
          {(data) => (
            <>
              <AllocationTable caption="Running allocations" items={data.live} skuName={skuName} />
              {data.truncated ? (
                <p className="muted">
                  Showing the first page only. <Link to="/allocations">See all allocations</Link>.
                </p>
              ) : null}
            </>
          )}
        </QueryView>
        <p className="muted">Updated every {REFRESH_MS / 1000} s.</p>
      </section>
    </Page>
  );
}
