import type { ReactNode } from "react";
import { isBillingOperator, isOperator, useMe } from "../shared/auth/session";
import { ApiError } from "../shared/data/errors";
import { ErrorPanel } from "../shared/ui/states";

/** Operator pages show the forbidden state to others (the API refuses them too). */
export function RequireRole({ role, children }: { role: "admin" | "billing"; children: ReactNode }) {
  const me = useMe();
  const allowed = role === "admin" ? isOperator(me) : isBillingOperator(me);
  if (allowed) return <>{children}</>;
  return (
    <ErrorPanel
      error={new ApiError({ status: 403, code: "forbidden", message: "This page is for operators." })}
    />
  );
}
