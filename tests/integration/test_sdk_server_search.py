"""Server search from the SDK on the real stack (svc_search, svc_message,
svc_keys): turning it on hands the epoch key to the members' devices over
their end-to-end channels, sends and edits are indexed, a member who never
read a message finds it, a removed member finds nothing written after its
removal, and a delete for everyone never comes back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from parley_dev.stack import LocalStack
from parley_sdk import Client, DeleteScope, Role, SystemAction
from tests.integration.test_sdk_cli import run_cli
from tests.sdk_e2ee_inbox import connect, listening, unique


async def user(stack: LocalStack, store: Path, prefix: str) -> Client:
    return await connect(
        stack,
        store,
        handle=unique(prefix),
        device_name=f"{prefix}-1",
        search_target=stack.search_target,
    )


async def server_texts(client: Client, query: str, **kwargs: Any) -> list[str]:
    return [r.text async for r in client.iter_search(query, server=True, page_size=5, **kwargs)]


async def test_members_find_by_server_search_and_a_removed_member_finds_nothing_new(
    stack: LocalStack, tmp_path: Path
) -> None:
    alice = await user(stack, tmp_path / "alice.db", "bsalice")
    bob = await user(stack, tmp_path / "bob.db", "bsbob")
    carol = await user(stack, tmp_path / "carol.db", "bscarol")
    async with alice, bob, carol:
        view = await alice.create_group("Plans", members=[bob.account_id, carol.account_id])
        group = view.conversation.conversation_id
        await alice.send_text(group, "the plan before search was on")
        turned = await alice.set_server_search(group, True)
        assert turned.conversation.server_search
        history = [m async for m in bob.list_messages(group, page_size=10)]
        assert history[0].system.action == int(SystemAction.SEARCH_CHANGED)

        await alice.send_text(group, "the plan for Friday")
        await bob.send_text(group, "Friday lunch at the Café Müller?")
        # Carol never read either message: the server's index finds them,
        # her device decrypts them and checks the words.
        assert await server_texts(carol, "friday") == [
            "Friday lunch at the Café Müller?",
            "the plan for Friday",
        ]
        assert await server_texts(carol, "cafe friday") == ["Friday lunch at the Café Müller?"]
        assert await server_texts(carol, "mueller", conversation_id=group) == [
            "Friday lunch at the Café Müller?"
        ]
        assert await server_texts(carol, "before") == []  # not indexed while off
        assert [r.text for r in (await carol.search("plan")).results] == [
            "the plan for Friday"
        ]  # and now her own index holds what she decrypted

        await alice.remove_member(group, carol.account_id)
        await alice.send_text(group, "the new plan, without carol")
        assert await server_texts(bob, "plan") == [
            "the new plan, without carol",
            "the plan for Friday",
        ]
        assert await server_texts(carol, "plan") == ["the plan for Friday"]
        assert await server_texts(carol, "without") == []

        edited = await bob.send_text(group, "meet at noon")
        await bob.edit_text(group, edited.message_id, "meet at dusk")
        assert await server_texts(alice, "dusk") == ["meet at dusk"]
        assert await server_texts(alice, "noon") == []
        await bob.delete_message(group, edited.message_id, scope=DeleteScope.FOR_EVERYONE)
        assert await server_texts(alice, "dusk") == []

        await alice.set_server_search(group, False)
        assert await server_texts(bob, "plan") == []


async def test_the_cli_turns_server_search_on_and_searches_the_server(
    stack: LocalStack, tmp_path: Path
) -> None:
    home = tmp_path / "parley-home"
    targets = [
        "--keys-target",
        stack.keys_target,
        "--message-target",
        stack.message_targets[0],
        "--search-target",
        stack.search_target,
    ]
    alice, bob = unique("svalice"), unique("svbob")
    for profile, handle in (("a", alice), ("b", bob)):
        code, _, err = await run_cli(home, "signup", handle, "--profile", profile, *targets)
        assert code == 0, err
    code, out, err = await run_cli(home, "send", f"@{bob}", "before", "--profile", "a")
    assert code == 0, err
    code, out, err = await run_cli(home, "server-search", "on", f"@{bob}", "--profile", "a")
    assert code == 0, err
    assert out.startswith("server search is on for ")
    code, _, err = await run_cli(home, "send", f"@{bob}", "Lunch on Friday?", "--profile", "a")
    assert code == 0, err
    # Bob's device never read it: only the server's index can find it.
    code, out, err = await run_cli(home, "search", "lunch", "--profile", "b")
    assert (code, out.strip()) == (0, "(no matches)"), err
    code, out, err = await run_cli(home, "search", "friday", "--server", "--profile", "b")
    assert code == 0, err
    [line] = out.splitlines()
    assert line.endswith(f"@{alice}: Lunch on [Friday]?")
    code, out, err = await run_cli(home, "search", "hel*", "--server", "--profile", "b")
    assert code == 2
    assert "prefixes" in err


async def test_when_the_changer_leaves_the_lowest_admin_makes_the_key_from_its_stream(
    stack: LocalStack, tmp_path: Path
) -> None:
    alice = await user(stack, tmp_path / "alice.db", "lsalice")
    bob = await user(stack, tmp_path / "bob.db", "lsbob")
    carol = await user(stack, tmp_path / "carol.db", "lscarol")
    async with alice, bob, carol:
        view = await alice.create_group("Leaving", members=[bob.account_id, carol.account_id])
        group = view.conversation.conversation_id
        await alice.set_member_role(group, bob.account_id, Role.OWNER)
        await alice.set_server_search(group, True)
        async with listening(bob) as inbox:
            left_seq = await alice.leave_conversation(group)
            # Bob (the only owner left) hears MEMBER_LEFT on his stream and
            # makes the new epoch's key before anyone needs it.
            await inbox.wait_for(
                "bob's key for the new epoch",
                lambda: bool(bob._require_e2ee().server.keys.keys_of(group, left_seq)),
            )
        [key] = bob._require_e2ee().server.keys.keys_of(group, left_seq)
        await carol.send_text(group, "written after alice left")
        # Carol took bob's key rather than making one.
        assert carol._require_e2ee().server.keys.keys_of(group, left_seq) == [key]
        assert await server_texts(bob, "after") == ["written after alice left"]
        assert await server_texts(alice, "after") == []
