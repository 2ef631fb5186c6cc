"""End users reading and changing their own profile (docs/end-users.md).

An end user is authenticated by an access token of the configured OpenID Connect issuer (checked
by an `EndUserTokens`) and stands as a `Principal` with no scopes: every use case that asks for a
scope refuses them, so the one profile an end user reaches is the one an admin linked to their
subject, through `/v1/me` (and GraphQL's `me`).

What they see and change of it, field by field (as Auth0's user against app metadata, or Kratos's
traits against admin metadata):
- they read every field but the attributes the schema does not mark `"endUser": "read"` or
  `"edit"` (private ones never);
- they change `display_name`, `bio`, `avatar_url`, `locale`, `timezone`, `links`, and the
  attributes marked `"edit"`;
- their handle and emails only where the operator allows it (`KEEL_END_USER_HANDLE_CHANGES`,
  `KEEL_END_USER_EMAIL_CHANGES`); an address they add is unverified, and they cannot mark one
  verified themselves.
A change to anything else is refused as a whole (`Forbidden`, naming each field), whether or not
the field exists: the answer says nothing of attributes they cannot read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

from keel.domain.api_keys import AuditEntry, Principal
from keel.domain.end_users import MAX_SUBJECT_LENGTH, EndUser, LinkOutcome, SubjectLink, valid_subject
from keel.domain.errors import Conflict, FieldError, Forbidden, NotFound, ValidationFailed
from keel.domain.ids import is_profile_id
from keel.domain.merge_patch import apply_merge_patch
from keel.domain.profile import JSONObject, JSONValue, Profile
from keel.service.admin_actions import record_admin_action
from keel.service.attributes import AttributePolicy
from keel.service.auth import TOKEN_PREFIX
from keel.service.ports import Clock, Store
from keel.service.profile_input import fields_document, parse_profile_fields
from keel.service.profile_reads import ProfileRead
from keel.service.use_cases import ExpectedVersion, RevocableAuthenticator

END_USERS_ONLY = "Only end users have a profile of their own: send an access token of the issuer."
NOT_LINKED = "No profile is linked to you."
NOT_SET_UP = "End users are not set up on this deployment (KEEL_OIDC_ISSUER)."
_ALWAYS_EDITABLE = frozenset({"display_name", "bio", "avatar_url", "locale", "timezone", "links"})
_MISSING = object()


class EndUserTokens(Protocol):
    async def verify(self, token: str) -> EndUser:
        """Who the access token was given to; `Unauthenticated` when it is not valid (one
        message whatever failed), `Unavailable` when the issuer's keys cannot be had."""
        ...


class OwnedProfiles(Protocol):
    """What end users' use cases need of the profile service: a read and a write of a profile
    whose ownership they have checked (no scope asked)."""

    async def owner_read(self, profile_id: str) -> ProfileRead | None: ...

    async def owner_write(
        self, profile_id: str, expected_version: ExpectedVersion, change: Callable[[Profile], Profile | None]
    ) -> Profile: ...


def is_access_token(token: str) -> bool:
    """A JWT in compact form (three dot-separated parts), not a Keel API key."""
    return not token.startswith(TOKEN_PREFIX) and token.count(".") == 2


class Credentials:
    """The process's authenticator: API keys as `keys` checks them, and, with `tokens`, end
    users' access tokens. Revocations reach the keys' cache."""

    def __init__(
        self, keys: RevocableAuthenticator, tokens: EndUserTokens | None, *, plan: str, api_version: str = ""
    ) -> None:
        """`api_version`: the version end users' requests are answered in when they name none."""
        self._keys = keys
        self._tokens = tokens
        self._plan = plan
        self._api_version = api_version

    async def authenticate(self, token: str | None) -> Principal:
        if token and self._tokens is not None and is_access_token(token):
            user = await self._tokens.verify(token)
            # No scopes; the configured API version unless the request names one.
            return Principal(
                key_id=user.client_id,
                scopes=frozenset(),
                api_version=self._api_version,
                plan=self._plan,
                end_user=user,
            )
        return await self._keys.authenticate(token)

    def known(self, token: str) -> Principal | None:
        if self._tokens is not None and is_access_token(token):
            return None  # checked on every request: its expiry is to the second
        return self._keys.known(token)

    def forget_key(self, key_id: str) -> None:
        self._keys.forget_key(key_id)

    def forget_all(self) -> None:
        self._keys.forget_all()


@dataclass(frozen=True, slots=True)
class EndUserRules:
    """What the operator lets end users change beyond the fields that are always theirs."""

    handle_changes: bool = False
    email_changes: bool = False


class EndUserProfiles:
    """The use cases of end users (`me`, `update_me`) and of the admins who link profiles to
    subjects. `issuer`: the one issuer whose subjects are linked."""

    def __init__(
        self,
        store: Store,
        profiles: OwnedProfiles,
        policy: AttributePolicy,
        clock: Clock,
        *,
        issuer: str,
        rules: EndUserRules,
        event_source: str = "/keel",
    ) -> None:
        self._store = store
        self._profiles = profiles
        self._policy = policy
        self._clock = clock
        self._issuer = issuer
        self._rules = rules
        self._event_source = event_source

    # -- end users -----------------------------------------------------------------------

    async def me(self, principal: Principal) -> ProfileRead:
        profile_id = await self._linked(principal)
        read = await self._profiles.owner_read(profile_id)
        if read is None:
            raise NotFound(NOT_LINKED)
        return replace(read, profile=self.view(read.profile))

    async def update_me(
        self,
        principal: Principal,
        patch: JSONValue,
        *,
        expected_version: ExpectedVersion = None,
        expected_version_of: Callable[[str], ExpectedVersion] | None = None,
    ) -> Profile:
        """Apply an RFC 7396 merge patch to the caller's own profile, within the field rules.
        `expected_version_of`: the versions a precondition names, given the profile's id (an
        entity tag names its profile), in place of `expected_version`."""
        if not isinstance(patch, dict):
            raise ValidationFailed([FieldError("", "a merge patch must be a JSON object")])
        profile_id = await self._linked(principal)
        if expected_version_of is not None:
            expected_version = expected_version_of(profile_id)
        now = self._clock.now()

        def change(current: Profile) -> Profile | None:
            document = fields_document(current.fields)
            attributes = document["attributes"]
            assert isinstance(attributes, dict)
            readable = self._policy.end_user_readable
            hidden = {k: v for k, v in attributes.items() if k not in readable}
            view: JSONObject = {
                **document,
                "attributes": {k: v for k, v in attributes.items() if k in readable},
            }
            patched = apply_merge_patch(view, patch)
            if not isinstance(patched, dict):
                raise ValidationFailed([FieldError("", "a merge patch must be a JSON object")])
            self._check_changes(view, patched, current)
            patched_attributes = patched.get("attributes")
            if patched_attributes is None:
                patched["attributes"] = dict(hidden)
            elif isinstance(patched_attributes, dict):
                patched["attributes"] = {**patched_attributes, **hidden}
            # Their errors never name what the end user cannot read, present or not.
            unreadable = frozenset(hidden) | (self._policy.names - readable)
            fields = parse_profile_fields(patched, self._policy, hidden=unreadable)
            return None if fields == current.fields else current.revise(fields, now)

        return self.view(await self._profiles.owner_write(profile_id, expected_version, change))

    def view(self, profile: Profile) -> Profile:
        """The profile as its end user sees it: attributes they may not read left out."""
        attributes = profile.fields.attributes
        readable = self._policy.end_user_readable
        if all(name in readable for name in attributes):
            return profile
        visible = {k: v for k, v in attributes.items() if k in readable}
        return replace(profile, fields=replace(profile.fields, attributes=visible))

    def _check_changes(self, before: JSONObject, after: dict[str, JSONValue], current: Profile) -> None:
        refused: list[str] = []
        for name in sorted(set(before) | set(after)):
            if name == "attributes" or before.get(name, _MISSING) == after.get(name, _MISSING):
                continue
            if name in _ALWAYS_EDITABLE or (name == "handle" and self._rules.handle_changes):
                continue
            if name == "emails" and self._rules.email_changes:
                refused.extend(_self_verified(after.get(name), current))
                continue
            refused.append(f"/{name}")
        old = before.get("attributes")
        new = after.get("attributes")
        old_attributes = old if isinstance(old, dict) else {}
        new_attributes = new if isinstance(new, dict) else {}
        editable = self._policy.end_user_editable
        for name in sorted(set(old_attributes) | set(new_attributes)):
            if name not in editable and old_attributes.get(name, _MISSING) != new_attributes.get(
                name, _MISSING
            ):
                refused.append(f"/attributes/{name}")
        if new is not None and not isinstance(new, dict) and not refused:
            raise ValidationFailed([FieldError("/attributes", "must be an object")])
        if refused:
            raise Forbidden(f"End users may not change {', '.join(refused)}.")

    async def _linked(self, principal: Principal) -> str:
        user = principal.end_user
        if user is None:
            raise Forbidden(END_USERS_ONLY)
        async with self._store.unit_of_work(read_only=True) as uow:
            profile_id = await uow.subjects.profile_of(user.issuer, user.subject)
        if profile_id is None:
            raise NotFound(NOT_LINKED)
        return profile_id

    # -- admins --------------------------------------------------------------------------

    async def link(self, principal: Principal, profile_id: str, subject: object) -> SubjectLink:
        """Link the profile to `subject` of the issuer, in place of any subject it had; a
        subject already linked to another profile is a `Conflict`."""
        _require_admin(principal)
        if not valid_subject(subject):
            rule = f"text of 1-{MAX_SUBJECT_LENGTH} characters, no control characters"
            raise ValidationFailed([FieldError("/subject", rule)])
        assert isinstance(subject, str)
        user = EndUser(self._issuer, subject)
        read = await self._profiles.owner_read(profile_id) if is_profile_id(profile_id) else None
        if read is None:
            raise NotFound("No such profile.")
        now = self._clock.now()
        async with self._store.unit_of_work() as uow:
            outcome = await uow.subjects.link(profile_id, user, now)
            if outcome is LinkOutcome.NO_PROFILE:
                raise NotFound("No such profile.")
            if outcome is LinkOutcome.TAKEN:
                raise Conflict(
                    "This subject is linked to another profile; unlink it there first.", "/subject"
                )
            # Which end user, as the logs name them (a hash): never the subject itself.
            detail: dict[str, object] = {"end_user": user.client_id}
            entry = AuditEntry(now, principal.key_id, "profile.end_user_linked", profile_id, detail)
            await record_admin_action(uow, entry, self._event_source)
            await uow.commit()
        return SubjectLink(profile_id, user, now)

    async def linked_subject(self, principal: Principal, profile_id: str) -> SubjectLink:
        _require_admin(principal)
        if not is_profile_id(profile_id):
            raise NotFound("No end user is linked to this profile.")
        async with self._store.unit_of_work(read_only=True) as uow:
            link = await uow.subjects.subject_of(profile_id)
        if link is None:
            raise NotFound("No end user is linked to this profile.")
        user, linked_at = link
        return SubjectLink(profile_id, user, linked_at)

    async def unlink(self, principal: Principal, profile_id: str) -> None:
        _require_admin(principal)
        now = self._clock.now()
        async with self._store.unit_of_work() as uow:
            link = await uow.subjects.subject_of(profile_id) if is_profile_id(profile_id) else None
            if link is None or not await uow.subjects.unlink(profile_id):
                raise NotFound("No end user is linked to this profile.")
            detail: dict[str, object] = {"end_user": link[0].client_id}
            entry = AuditEntry(now, principal.key_id, "profile.end_user_unlinked", profile_id, detail)
            await record_admin_action(uow, entry, self._event_source)
            await uow.commit()


def _self_verified(emails: JSONValue, current: Profile) -> list[str]:
    """The emails an end user marked verified that the profile does not hold verified."""
    if not isinstance(emails, list):
        return []
    verified = {email.normalized for email in current.fields.emails if email.verified}
    return [
        f"/emails/{index}/verified"
        for index, email in enumerate(emails)
        if isinstance(email, dict)
        and email.get("verified") is True
        and not (isinstance(email.get("address"), str) and str(email["address"]).lower() in verified)
    ]


def _require_admin(principal: Principal) -> None:
    # Before anything is looked up: a caller without admin learns nothing of the profile.
    if not principal.is_admin:
        raise Forbidden("Only admin keys may link profiles to end users.")
