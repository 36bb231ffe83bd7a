import { describe, expect, it } from "vitest";
import { currencyDigits, formatSignedMoney, numbersIn, parseAmount } from "./money";
import { addDebits, dayKey, emptyDays } from "./SpendChart";
import { findCredit } from "./CheckoutReturnPage";
import type { LedgerEntry } from "./money";

describe("money helpers", () => {
  it("parses typed amounts in the currency's precision", () => {
    expect(parseAmount("20", "USD")).toBe(2000);
    expect(parseAmount("20.5", "EUR")).toBe(2050);
    expect(parseAmount("20.505", "USD")).toBeNull();
    expect(parseAmount("-5", "USD")).toBeNull();
    expect(parseAmount("abc", "USD")).toBeNull();
    expect(currencyDigits("JPY")).toBe(0);
    expect(parseAmount("2000", "JPY")).toBe(2000);
  });

  it("signs amounts in text, not only colour", () => {
    expect(formatSignedMoney(2000, "USD")).toMatch(/^\+.*20\.00/);
    expect(formatSignedMoney(-125, "USD")).toMatch(/^\u2212.*1\.25/);
    expect(formatSignedMoney(0, "USD")).not.toMatch(/^[+\u2212]/);
  });

  it("reads the numbers of a server message", () => {
    expect(numbersIn("the amount must be between 500 and 1000000 minor units")).toEqual([500, 1000000]);
    expect(numbersIn("only 1500 minor units of this credit remain refundable")).toEqual([1500]);
  });
});

describe("spend per day", () => {
  it("buckets negative usage debits by local day", () => {
    const now = new Date(2026, 2, 14, 15, 0, 0);
    const days = emptyDays(14, now);
    expect(days).toHaveLength(14);
    expect(days[13]?.key).toBe(dayKey(now));
    expect(days[0]?.key).toBe("2026-03-01");
    addDebits(days, [
      { entry_type: "usage_debit", amount_minor: -100, created_at: new Date(2026, 2, 14, 9).toISOString() },
      { entry_type: "usage_debit", amount_minor: -50, created_at: new Date(2026, 2, 14, 23, 59).toISOString() },
      { entry_type: "usage_debit", amount_minor: -7, created_at: new Date(2026, 2, 1, 0, 1).toISOString() },
      { entry_type: "credit_purchase", amount_minor: 5000, created_at: new Date(2026, 2, 14).toISOString() },
      { entry_type: "usage_debit", amount_minor: -999, created_at: new Date(2026, 1, 27).toISOString() },
    ]);
    expect(days[13]?.minor).toBe(150);
    expect(days[0]?.minor).toBe(7);
    expect(days.reduce((sum, day) => sum + day.minor, 0)).toBe(157);
  });
});

describe("the top-up's credit", () => {
  const entry = (over: Partial<LedgerEntry>): LedgerEntry => ({
    id: "e1",
    tenant_id: "t",
    entry_no: 7,
    entry_type: "credit_purchase",
    amount_minor: 2000,
    currency: "USD",
    idempotency_key: "stripe:cs_test_1",
    reference_type: "payment_session",
    reference_id: "ps1",
    correlation_id: "c",
    created_by: "stripe",
    created_at: new Date(1_000_000).toISOString(),
    description: "Card top-up (Stripe cs_test_1)",
    ...over,
  });

  it("matches by the Stripe session id when the URL had one", () => {
    const entries = [entry({ id: "other", idempotency_key: "stripe:cs_other", description: null }), entry({})];
    expect(findCredit(entries, "cs_test_1", 0)?.id).toBe("e1");
    expect(findCredit(entries, "cs_missing", 0)).toBeNull();
  });

  it("otherwise takes a card credit posted just before or after the return", () => {
    const recent = entry({ created_at: new Date(Date.now() - 60_000).toISOString() });
    expect(findCredit([recent], null, Date.now())?.id).toBe("e1");
    expect(findCredit([entry({ created_at: new Date(0).toISOString() })], null, Date.now())).toBeNull();
  });
});
