// Type-checked against the types openapi-typescript generates from 2026-12-07's document
// (./keel.d.ts, written by tests/contract/test_generated_client.py): what a TypeScript client
// of this version writes. A line marked @ts-expect-error must fail to type-check.
import type { components, operations } from "./keel";

type Profile = components["schemas"]["ProfileOut"];
type Page = components["schemas"]["ProfileList"];
type Problem = components["schemas"]["Problem"];
type Version = components["schemas"]["KeelVersion"];

export const version: Version = "2026-12-07";
// @ts-expect-error: not a version
export const unknownVersion: Version = "2026-12-01";

export function primaryEmail(profile: Profile): string {
  return profile.primary_email;
}

export function nextPage(page: Page): string | null {
  // @ts-expect-error: 2026-12-07 lists carry links, not next_cursor
  void page.next_cursor;
  return page.links.next;
}

type Read = operations["getProfile"]["responses"][200]["content"]["application/json"];
type Missing = operations["getProfile"]["responses"][404]["content"]["application/problem+json"];

export function handleOf(read: Read): string {
  return read.handle;
}

export function whyMissing(problem: Missing): [string, number] {
  const same: Problem = problem;
  return [same.type, same.status];
}

export const created: operations["createProfile"]["requestBody"]["content"]["application/json"] = {
  handle: "ada",
  emails: [{ address: "ada@example.com", primary: true }],
};
