import { formatDuration, formatMoney } from "../../../../shared/i18n/format";
import { secondsLeft } from "./model";

/**
 * What an allocation will cost before it is placed: price per GPU-hour × GPUs, the
 * balance, and how long the balance lasts at that rate (alone).
 */
export function CostSummary({
  pricePerGpuHourMinor,
  gpuCount,
  currency,
  balanceMinor,
  balanceCurrency,
  testIdPrefix,
}: {
  pricePerGpuHourMinor: number;
  gpuCount: number;
  currency: string;
  balanceMinor: number | undefined;
  balanceCurrency: string | null | undefined;
  /** Adds data-testid="<prefix>-hourly-cost" and "<prefix>-balance". */
  testIdPrefix?: string;
}) {
  const hourly = pricePerGpuHourMinor * gpuCount;
  const sameCurrency = !balanceCurrency || balanceCurrency.toUpperCase() === currency.toUpperCase();
  const lasts = balanceMinor !== undefined && sameCurrency ? secondsLeft(balanceMinor, hourly) : null;
  const id = (name: string) => (testIdPrefix ? `${testIdPrefix}-${name}` : undefined);
  return (
    <dl className="facts">
      <dt>Price per GPU-hour</dt>
      <dd>{formatMoney(pricePerGpuHourMinor, currency)}</dd>
      <dt>GPUs</dt>
      <dd>{gpuCount}</dd>
      <dt>Hourly cost</dt>
      <dd>
        <strong data-testid={id("hourly-cost")}>{formatMoney(hourly, currency)}</strong> per hour while active
      </dd>
      <dt>Your balance</dt>
      <dd data-testid={id("balance")}>
        {balanceMinor === undefined ? "…" : formatMoney(balanceMinor, balanceCurrency ?? currency)}
      </dd>
      {lasts !== null ? (
        <>
          <dt>Balance lasts</dt>
          <dd>{lasts <= 0 ? "No credit left" : `about ${formatDuration(lasts)} at this rate`}</dd>
        </>
      ) : null}
    </dl>
  );
}
