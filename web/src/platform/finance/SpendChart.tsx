// Daily usage spend as a hand-written SVG bar chart: the sum of the `usage_debit`
// ledger entries per local day. The chart is one image with a summary for screen
// readers; the numbers are also in a visually hidden table.

import { useState } from "react";
import { keepPreviousData, useQuery } from "@tanstack/react-query";
import { useApi } from "../../shared/data/ApiContext";
import { unwrap, type Api } from "../../shared/data/client";
import { formatMoney } from "../../shared/i18n/format";
import { Field } from "../../shared/ui/Field";
import { Empty, QueryView } from "../../shared/ui/states";

export interface DaySpend {
  key: string;
  date: Date;
  /** Spent that day, positive minor units. */
  minor: number;
}

export interface SpendSeries {
  days: DaySpend[];
  currency: string | null;
  /** True when the page cap was reached before the oldest day was covered. */
  truncated: boolean;
  /** The oldest entry read when truncated: days before it are incomplete. */
  completeFrom: Date | null;
  entries: number;
}

/** Ledger pages of 200 read at most per chart (usage is debited every minute). */
const MAX_PAGES = 25;
const PAGE_SIZE = 200;

function pad(n: number): string {
  return n < 10 ? `0${n}` : String(n);
}

export function dayKey(date: Date): string {
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}`;
}

/** Local midnight `days - 1` days ago, and one empty bucket per day up to today. */
export function emptyDays(days: number, now: Date = new Date()): DaySpend[] {
  const start = new Date(now);
  start.setHours(0, 0, 0, 0);
  start.setDate(start.getDate() - (days - 1));
  return Array.from({ length: days }, (_, index) => {
    const date = new Date(start);
    date.setDate(start.getDate() + index);
    return { key: dayKey(date), date, minor: 0 };
  });
}

/** Adds negative usage debits to their day (as positive spend); others are skipped. */
export function addDebits(
  days: DaySpend[],
  entries: { entry_type: string; amount_minor: number; created_at: string }[],
): void {
  const byKey = new Map(days.map((day) => [day.key, day]));
  for (const entry of entries) {
    if (entry.entry_type !== "usage_debit" || entry.amount_minor >= 0) continue;
    const day = byKey.get(dayKey(new Date(entry.created_at)));
    if (day) day.minor += -entry.amount_minor;
  }
}

async function loadSpend(api: Api, dayCount: number): Promise<SpendSeries> {
  const days = emptyDays(dayCount);
  const from = days[0]?.date.toISOString();
  let cursor: string | undefined;
  let pages = 0;
  let currency: string | null = null;
  let oldest: string | null = null;
  let entries = 0;
  let truncated = false;
  for (;;) {
    const page = await unwrap(
      api.GET("/api/v1/billing/ledger", {
        params: { query: { type: "usage_debit", from, limit: PAGE_SIZE, cursor } },
      }),
    );
    addDebits(days, page.items);
    for (const entry of page.items) {
      currency ??= entry.currency;
      oldest = entry.created_at;
    }
    entries += page.items.length;
    pages += 1;
    if (!page.next_cursor) break;
    if (pages >= MAX_PAGES) {
      truncated = true;
      break;
    }
    cursor = page.next_cursor;
  }
  return { days, currency, truncated, completeFrom: truncated && oldest ? new Date(oldest) : null, entries };
}

const dayLabel = new Intl.DateTimeFormat(undefined, { month: "short", day: "numeric" });
const dayLong = new Intl.DateTimeFormat(undefined, { weekday: "short", month: "short", day: "numeric" });

function BarChart({ series, currency, title }: { series: DaySpend[]; currency: string; title: string }) {
  const width = 640;
  const height = 220;
  const left = 64;
  const right = 8;
  const top = 12;
  const bottom = 28;
  const plotWidth = width - left - right;
  const plotHeight = height - top - bottom;
  const max = Math.max(0, ...series.map((day) => day.minor));
  const scaleMax = max > 0 ? max : 1;
  const slot = plotWidth / Math.max(1, series.length);
  const barWidth = Math.max(2, slot * 0.7);
  const labelEvery = series.length > 14 ? 5 : 2;
  const total = series.reduce((sum, day) => sum + day.minor, 0);
  const peak = series.reduce<DaySpend | null>((best, day) => (best === null || day.minor > best.minor ? day : best), null);
  const first = series[0];
  const last = series[series.length - 1];
  const summary =
    `${title}: usage spend per day from ${first ? dayLabel.format(first.date) : ""} to ${last ? dayLabel.format(last.date) : ""}, ` +
    `total ${formatMoney(total, currency)}` +
    (peak && peak.minor > 0 ? `, highest ${formatMoney(peak.minor, currency)} on ${dayLabel.format(peak.date)}.` : ".");
  return (
    <svg
      className="chart"
      viewBox={`0 0 ${width} ${height}`}
      role="img"
      aria-label={summary}
      data-testid="spend-chart"
    >
      <line className="axis" x1={left} y1={top} x2={left} y2={top + plotHeight} />
      <line className="axis" x1={left} y1={top + plotHeight} x2={width - right} y2={top + plotHeight} />
      <text x={left - 6} y={top + 4} textAnchor="end">
        {formatMoney(max, currency)}
      </text>
      <text x={left - 6} y={top + plotHeight / 2 + 4} textAnchor="end">
        {formatMoney(Math.round(max / 2), currency)}
      </text>
      <text x={left - 6} y={top + plotHeight + 4} textAnchor="end">
        {formatMoney(0, currency)}
      </text>
      {series.map((day, index) => {
        const barHeight = (day.minor / scaleMax) * plotHeight;
        const x = left + index * slot + (slot - barWidth) / 2;
        return (
          <g key={day.key}>
            <rect className="bar" x={x} y={top + plotHeight - barHeight} width={barWidth} height={barHeight} />
            {(index % labelEvery === 0 && series.length - 1 - index >= labelEvery / 2 + 1) || index === series.length - 1 ? (
              <text
                x={index === series.length - 1 ? x + barWidth : index === 0 ? x : x + barWidth / 2}
                y={height - 8}
                textAnchor={index === series.length - 1 ? "end" : index === 0 ? "start" : "middle"}
              >
                {dayLabel.format(day.date)}
              </text>
            ) : null}
          </g>
        );
      })}
    </svg>
  );
}

/** The "Spend over time" card body: period select, chart and its table. */
export function SpendChart({ fallbackCurrency }: { fallbackCurrency: string | null }) {
  const api = useApi();
  const [days, setDays] = useState(14);
  const query = useQuery({
    queryKey: ["billing", "spend", days],
    queryFn: () => loadSpend(api, days),
    staleTime: 60_000,
    placeholderData: keepPreviousData,
  });
  const title = `Last ${days} days`;
  return (
    <>
      <div className="toolbar">
        <Field label="Period">
          {(props) => (
            <select {...props} value={days} onChange={(event) => setDays(Number(event.target.value))}>
              <option value={14}>Last 14 days</option>
              <option value={30}>Last 30 days</option>
            </select>
          )}
        </Field>
      </div>
      <QueryView query={query} loadingLabel="Loading spend">
        {(data) => {
          const currency = data.currency ?? fallbackCurrency ?? "USD";
          const total = data.days.reduce((sum, day) => sum + day.minor, 0);
          if (total === 0 && !data.truncated) {
            return (
              <Empty title={`No usage charges in the last ${days} days`}>
                <p className="muted">Charges for running allocations appear here day by day.</p>
              </Empty>
            );
          }
          return (
            <>
              <p>
                Total usage in the last {days} days:{" "}
                <strong data-testid="spend-total">{formatMoney(total, currency)}</strong>
              </p>
              <BarChart series={data.days} currency={currency} title={title} />
              {data.truncated && data.completeFrom ? (
                <p className="warning">
                  Only the most recent {data.entries.toLocaleString()} charges were read; days before{" "}
                  {dayLong.format(data.completeFrom)} may show less than was spent. The usage table and CSV export
                  have every record.
                </p>
              ) : null}
              <div className="visually-hidden">
                <table>
                <caption>Usage spend per day, {title.toLowerCase()}</caption>
                <thead>
                  <tr>
                    <th scope="col">Day</th>
                    <th scope="col">Spent</th>
                  </tr>
                </thead>
                <tbody>
                  {data.days.map((day) => (
                    <tr key={day.key}>
                      <td>{dayLong.format(day.date)}</td>
                      <td>{formatMoney(day.minor, currency)}</td>
                    </tr>
                  ))}
                </tbody>
                </table>
              </div>
            </>
          );
        }}
      </QueryView>
    </>
  );
}
