import { lazy } from "react";
import { BrowserRouter, Route, Routes } from "react-router";
import { SessionProvider, useSession } from "../shared/auth/session";
import { ApiProvider } from "../shared/data/ApiContext";
import { ApiError } from "../shared/data/errors";
import { AnnouncerProvider } from "../shared/ui/Announcer";
import { Page } from "../shared/ui/Page";
import { ErrorPanel, Loading } from "../shared/ui/states";
import { OidcCallbackPage } from "../platform/iam/OidcCallbackPage";
import { SignInPage } from "../platform/iam/SignInPage";
import { AppLayout } from "./layouts/AppLayout";
import { RequireRole } from "./RequireRole";

// User pages load with the shell; operator pages are split out so users never
// download them.
const Dashboard = lazy(() => import("../products/gpuaas/workloads/DashboardPage"));
const Capacity = lazy(() => import("../products/gpuaas/compute/CapacityPage"));
const Allocations = lazy(() => import("../products/gpuaas/workloads/AllocationsPage"));
const CreateAllocation = lazy(() => import("../products/gpuaas/workloads/CreateAllocationPage"));
const AllocationDetail = lazy(() => import("../products/gpuaas/workloads/AllocationDetailPage"));
const SshKeys = lazy(() => import("../products/gpuaas/workloads/SshKeysPage"));
const Billing = lazy(() => import("../platform/finance/BillingPage"));
const CheckoutReturn = lazy(() => import("../platform/finance/CheckoutReturnPage"));
const AdminUsers = lazy(() => import("../platform/iam/admin/UsersPage"));
const AdminUserDetail = lazy(() => import("../platform/iam/admin/UserDetailPage"));
const AdminPayments = lazy(() => import("../platform/finance/admin/PaymentSessionsPage"));
const AdminAudit = lazy(() => import("../platform/evidence/AuditLogPage"));
const AdminFleet = lazy(() => import("../products/gpuaas/compute/admin/FleetPage"));
const AdminNode = lazy(() => import("../products/gpuaas/compute/admin/NodeDetailPage"));
const AdminAllocations = lazy(() => import("../products/gpuaas/workloads/admin/AdminAllocationsPage"));
const AdminReconciliation = lazy(() => import("../products/gpuaas/workloads/admin/ReconciliationPage"));

function NotFoundPage() {
  return (
    <Page title="Page not found">
      <ErrorPanel error={new ApiError({ status: 404, code: "route_not_found", message: "No page at this address." })} />
    </Page>
  );
}

function Gate() {
  const { state } = useSession();
  if (state.status === "starting") {
    return (
      <main id="main" className="signin">
        <Loading label="Starting" />
      </main>
    );
  }
  return (
    <Routes>
      <Route path="/auth/callback" element={<OidcCallbackPage />} />
      {state.status === "signed-out" ? (
        <Route path="*" element={<SignInPage reason={state.reason} />} />
      ) : (
        <Route element={<AppLayout />}>
          <Route index element={<Dashboard />} />
          <Route path="capacity" element={<Capacity />} />
          <Route path="allocations" element={<Allocations />} />
          <Route path="allocations/new" element={<CreateAllocation />} />
          <Route path="allocations/:allocationId" element={<AllocationDetail />} />
          <Route path="ssh-keys" element={<SshKeys />} />
          <Route path="billing" element={<Billing />} />
          <Route path="billing/top-up/:outcome" element={<CheckoutReturn />} />
          <Route path="admin/users" element={<RequireRole role="admin"><AdminUsers /></RequireRole>} />
          <Route path="admin/users/:userId" element={<RequireRole role="billing"><AdminUserDetail /></RequireRole>} />
          <Route path="admin/payments" element={<RequireRole role="billing"><AdminPayments /></RequireRole>} />
          <Route path="admin/audit" element={<RequireRole role="admin"><AdminAudit /></RequireRole>} />
          <Route path="admin/fleet" element={<RequireRole role="admin"><AdminFleet /></RequireRole>} />
          <Route path="admin/fleet/:nodeId" element={<RequireRole role="admin"><AdminNode /></RequireRole>} />
          <Route path="admin/allocations" element={<RequireRole role="admin"><AdminAllocations /></RequireRole>} />
          <Route path="admin/reconciliation" element={<RequireRole role="admin"><AdminReconciliation /></RequireRole>} />
          <Route path="*" element={<NotFoundPage />} />
        </Route>
      )}
    </Routes>
  );
}

export function App() {
  return (
    <ApiProvider>
      <AnnouncerProvider>
        <SessionProvider>
          <BrowserRouter>
            <Gate />
          </BrowserRouter>
        </SessionProvider>
      </AnnouncerProvider>
    </ApiProvider>
  );
}
