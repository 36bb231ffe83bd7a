// The tenant's balance, shared by Billing and the checkout return page.

import { useQuery } from "@tanstack/react-query";
import type { components } from "../../shared/api/schema";
import { useApi } from "../../shared/data/ApiContext";
import { unwrap } from "../../shared/data/client";
import { formatMoney } from "../../shared/i18n/format";

export type Balance = components["schemas"]["Balance"];

export function useBalance(refetchInterval: number | false = 30_000) {
  const api = useApi();
  return useQuery({
    queryKey: ["billing", "balance"],
    queryFn: () => unwrap(api.GET("/api/v1/billing/balance")),
    refetchInterval,
  });
}

/** The balance in words: "$12.00", or "0.00" before the account's first posting. */
export function balanceText(balance: Balance): string {
  return balance.currency ? formatMoney(balance.amount_minor, balance.currency) : (0).toFixed(2);
}
