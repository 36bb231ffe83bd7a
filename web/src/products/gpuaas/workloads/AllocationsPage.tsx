import { keepPreviousData, useQuery } from "@tanstack/react-query";
import { Link, useSearchParams } from "react-router";
import { useApi } from "../../../shared/data/ApiContext";
import { unwrap } from "../../../shared/data/client";
import { SelectField } from "../../../shared/ui/Field";
import { Page } from "../../../shared/ui/Page";
import { AllocationTable } from "./allocation/AllocationTable";
import { Pager, useCursorPager } from "../../../shared/ui/Pager";
import { Empty, QueryView } from "../../../shared/ui/states";
import { skuIndex, useSkus } from "../compute/catalog";
import { ALLOCATION_STATUSES, isTransitional, statusLabel, type AllocationStatus } from "./allocation/model";
import { ALLOCATIONS_KEY } from "./allocation/queries";

const PAGE_SIZE = 50;
const POLL_MS = 5_000;

function parseStatus(value: string | null): AllocationStatus | "" {
  return value !== null && (ALLOCATION_STATUSES as readonly string[]).includes(value) ? (value as AllocationStatus) : "";
}

export default function AllocationsPage() {
  const api = useApi();
  const [params, setParams] = useSearchParams();
  const status = parseStatus(params.get("status"));
  const pager = useCursorPager();
  const skus = useSkus();
  const index = skuIndex(skus.data?.items ?? []);

  const list = useQuery({
    queryKey: [...ALLOCATIONS_KEY, "list", status, pager.cursor],
    queryFn: () =>
      unwrap(
        api.GET("/api/v1/allocations", {
          params: { query: { status: status === "" ? undefined : status, cursor: pager.cursor ?? undefined, limit: PAGE_SIZE } },
        }),
      ),
    placeholderData: keepPreviousData,
    // Poll while the platform is still working on something listed.
    refetchInterval: (query) => (query.state.data?.items.some((a) => isTransitional(a.status)) ? POLL_MS : false),
  });

  function changeStatus(next: string) {
    pager.reset();
    setParams(
      (current) => {
        const updated = new URLSearchParams(current);
        if (next === "") updated.delete("status");
        else updated.set("status", next);
        return updated;
      },
      { replace: true },
    );
  }

  const polling = list.data?.items.some((a) => isTransitional(a.status)) ?? false;

  return (
    <Page
      title="Allocations"
      actions={
        <Link className="button button-primary" to="/allocations/new">
          Create allocation
        </Link>
      }
    >
      <div className="toolbar">
        <SelectField
          label="Status"
          value={status}
          options={[{ value: "", label: "All statuses" }, ...ALLOCATION_STATUSES.map((s) => ({ value: s, label: statusLabel(s) }))]}
          onChange={changeStatus}
        />
      </div>
      <QueryView
        query={list}
        loadingLabel="Loading allocations"
        isEmpty={(data) => data.items.length === 0 && pager.page === 1}
        empty={
          status === "" ? (
            <Empty title="No allocations yet">
              <p>
                See what is free on the <Link to="/capacity">Capacity</Link> page, then create one.
              </p>
            </Empty>
          ) : (
            <Empty title={`No allocations with status “${statusLabel(status)}”`}>
              <p>Choose another status, or all statuses.</p>
            </Empty>
          )
        }
      >
        {(data) => (
          <>
            <AllocationTable
              caption={`Your allocations${status ? `, status ${statusLabel(status)}` : ""}, newest first, page ${pager.page}`}
              items={data.items}
              skuName={(id) => index.get(id)?.display_name ?? id}
              testId="allocations-table"
              busy={list.isFetching && list.isPlaceholderData}
            />
            {data.items.length === 0 ? <p className="muted">No more allocations.</p> : null}
            <Pager pager={pager} nextCursor={data.next_cursor} label="Allocations" />
            {polling ? <p className="muted">Some allocations are changing; this list updates every {POLL_MS / 1000} s.</p> : null}
          </>
        )}
      </QueryView>
    </Page>
  );
}
