// Money helpers for the finance and operator pages: currency precision, signed
// amounts, and the words for ledger entry types. Amounts stay integer minor units.

import type { components } from "../../shared/api/schema";
import { formatMoney, parseMoneyInput } from "../../shared/i18n/format";

export type EntryType = components["schemas"]["EntryType"];
export type LedgerEntry = components["schemas"]["LedgerEntry"];

/** The currencies card top-ups may use by default (policy `payments.currencies`). */
export const DEFAULT_CURRENCIES = ["USD", "EUR", "GBP"] as const;

export const ENTRY_TYPE_LABELS: Record<EntryType, string> = {
  credit_purchase: "Card top-up",
  usage_debit: "Usage debit",
  admin_credit: "Operator credit",
  admin_debit: "Operator debit",
  refund: "Refund",
  reversal: "Reversal",
};

export const ENTRY_TYPES = Object.keys(ENTRY_TYPE_LABELS) as EntryType[];

const digitsCache = new Map<string, number>();

/** How many minor-unit digits a currency has (2 for USD, 0 for JPY). */
export function currencyDigits(currency: string): number {
  const code = currency.toUpperCase();
  let digits = digitsCache.get(code);
  if (digits === undefined) {
    try {
      digits = new Intl.NumberFormat(undefined, { style: "currency", currency: code }).resolvedOptions()
        .maximumFractionDigits;
    } catch {
      digits = 2;
    }
    digits ??= 2;
    digitsCache.set(code, digits);
  }
  return digits;
}

/** A typed amount in whole currency units ("20", "20.50") to minor units, or null. */
export function parseAmount(text: string, currency: string): number | null {
  return parseMoneyInput(text, currencyDigits(currency));
}

/** "+$20.00", "−$1.25" (a real minus sign, read as "minus"), "$0.00". */
export function formatSignedMoney(minor: number, currency: string): string {
  if (minor > 0) return `+${formatMoney(minor, currency)}`;
  if (minor < 0) return `\u2212${formatMoney(-minor, currency)}`;
  return formatMoney(0, currency);
}

/** The integers in a server message ("between 500 and 1000000 minor units"). */
export function numbersIn(message: string): number[] {
  return [...message.matchAll(/\d+/g)].map((match) => Number(match[0]));
}

/** The amount hint for a currency: "In USD, e.g. 20 or 20.50". */
export function amountHint(currency: string): string {
  const digits = currencyDigits(currency);
  return digits === 0
    ? `In ${currency}, a whole number, e.g. 2000.`
    : `In ${currency}, e.g. 20 or 20.${"5".padEnd(digits, "0")} (use a dot for decimals).`;
}
