import { describe, expect, it } from "vitest";
import { formatDuration, parseMoneyInput } from "./format";

describe("format", () => {
  it("parses typed amounts to exact minor units", () => {
    expect(parseMoneyInput("12.5")).toBe(1250);
    expect(parseMoneyInput("0.01")).toBe(1);
    expect(parseMoneyInput("100")).toBe(10000);
    expect(parseMoneyInput("1.234")).toBeNull();
    expect(parseMoneyInput("-3")).toBeNull();
    expect(parseMoneyInput("abc")).toBeNull();
  });
  it("formats durations", () => {
    expect(formatDuration(42)).toBe("42 s");
    expect(formatDuration(3725)).toBe("1 h 2 min");
    expect(formatDuration(90000)).toBe("1 d 1 h");
  });
});
