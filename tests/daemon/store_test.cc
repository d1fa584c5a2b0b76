// Store: WAL mode, durability across reopen, migrations from an older schema.
#include "daemon/store.h"

#include <gtest/gtest.h>
#include <sqlite3.h>

#include "tests/testlib/test_util.h"

namespace kvkeep {
namespace {

StoredMessage Msg(int64_t seq, std::string role, std::string content, std::vector<int32_t> tokens) {
  StoredMessage m;
  m.seq = seq;
  m.role = std::move(role);
  m.content = std::move(content);
  m.tokens = std::move(tokens);
  return m;
}

// Runs SQL through a separate raw connection (an independent view of the file).
void RawExec(const std::string& path, const std::string& sql) {
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  char* err = nullptr;
  int rc = sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &err);
  EXPECT_EQ(rc, SQLITE_OK) << (err ? err : "");
  sqlite3_free(err);
  sqlite3_close(db);
}

int64_t RawCount(const std::string& path, const std::string& sql) {
  sqlite3* db = nullptr;
  EXPECT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  sqlite3_stmt* stmt = nullptr;
  EXPECT_EQ(sqlite3_prepare_v2(db, sql.c_str(), -1, &stmt, nullptr), SQLITE_OK);
  int64_t n = -1;
  if (sqlite3_step(stmt) == SQLITE_ROW) n = sqlite3_column_int64(stmt, 0);
  sqlite3_finalize(stmt);
  sqlite3_close(db);
  return n;
}

TEST(StoreTest, OpensInWalModeAtTheLatestSchema) {
  testing::TempDir dir;
  auto store = Store::Open(dir.File("kvkeep.db"));
  ASSERT_TRUE(store.ok()) << store.status().ToString();
  auto mode = (*store)->JournalMode();
  ASSERT_TRUE(mode.ok());
  EXPECT_EQ(*mode, "wal");
  auto version = (*store)->SchemaVersion();
  ASSERT_TRUE(version.ok());
  EXPECT_EQ(*version, Store::LatestSchemaVersion());
  EXPECT_GE(Store::LatestSchemaVersion(), 2);
  // An independent connection sees the file in WAL mode too (it is persistent).
  EXPECT_EQ(RawCount(dir.File("kvkeep.db"),
                     "SELECT count(*) FROM pragma_journal_mode() "
                     "WHERE journal_mode = 'wal'"),
            1);
}

TEST(StoreTest, SessionsMessagesAndToolEventsSurviveReopen) {
  testing::TempDir dir;
  const std::string path = dir.File("kvkeep.db");
  {
    auto store = Store::Open(path);
    ASSERT_TRUE(store.ok());
    StoredSession s{1000, "a", 10, 10, "tiny", false, {Msg(0, "system", "be brief", {1, 2, 3})}};
    ASSERT_TRUE((*store)->CreateSession(s).ok());
    ASSERT_TRUE((*store)->AppendMessages(1000, "a", {Msg(1, "user", "hi", {4, 5})}, 20).ok());
    auto ev = (*store)->BeginToolEvent(1000, "a", "bash", "ls", 30);
    ASSERT_TRUE(ev.ok());
    StoredMessage tool_msg = Msg(2, "tool", "out", {6});
    tool_msg.name = "bash";
    ASSERT_TRUE((*store)->EndToolEvent(1000, "a", *ev, "bash", 45, 15, {tool_msg}).ok());
    StoredSession other{2000, "a", 11, 11, "tiny", false, {}};
    ASSERT_TRUE((*store)->CreateSession(other).ok());  // same id, another uid: distinct
    ASSERT_TRUE((*store)->CopySession(1000, "a", "b", 50).ok());
    ASSERT_TRUE((*store)->SetClosed(1000, "b", true, 60).ok());
  }
  auto store = Store::Open(path);
  ASSERT_TRUE(store.ok());
  auto all = (*store)->LoadAll();
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->size(), 3u);
  const StoredSession& a = (*all)[0];
  EXPECT_EQ(a.owner_uid, 1000u);
  EXPECT_EQ(a.id, "a");
  EXPECT_EQ(a.updated_us, 45);
  ASSERT_EQ(a.messages.size(), 3u);
  EXPECT_EQ(a.messages[1].content, "hi");
  EXPECT_EQ(a.messages[1].tokens, (std::vector<int32_t>{4, 5}));
  EXPECT_EQ(a.messages[2].name, "bash");
  const StoredSession& b = (*all)[1];
  EXPECT_EQ(b.id, "b");
  EXPECT_TRUE(b.closed);
  ASSERT_EQ(b.messages.size(), 3u);
  EXPECT_EQ(b.messages[0].tokens, (std::vector<int32_t>{1, 2, 3}));
  EXPECT_EQ((*all)[2].owner_uid, 2000u);
  EXPECT_TRUE((*all)[2].messages.empty());

  auto events = (*store)->ListToolEvents(1000, "a");
  ASSERT_TRUE(events.ok());
  ASSERT_EQ(events->size(), 1u);
  EXPECT_EQ((*events)[0].tool, "bash");
  EXPECT_EQ((*events)[0].args, "ls");
  EXPECT_EQ((*events)[0].duration_us, 15);
  auto samples = (*store)->ToolLatencySamples("bash");
  ASSERT_TRUE(samples.ok());
  EXPECT_EQ(*samples, std::vector<int64_t>{15});

  ASSERT_TRUE((*store)->DeleteSession(1000, "a").ok());
  EXPECT_EQ((*store)->LoadAll()->size(), 2u);
  EXPECT_TRUE((*store)->ListToolEvents(1000, "a")->empty());
}

TEST(StoreTest, DuplicateMessageSeqFailsTheWholeAppend) {
  testing::TempDir dir;
  auto store = Store::Open(dir.File("kvkeep.db"));
  ASSERT_TRUE(store.ok());
  ASSERT_TRUE((*store)->CreateSession({7, "s", 1, 1, "m", false, {Msg(0, "user", "x", {1})}}).ok());
  // seq 1 is new, seq 0 collides: the transaction must leave nothing behind.
  Status st =
      (*store)->AppendMessages(7, "s", {Msg(1, "user", "y", {2}), Msg(0, "user", "z", {3})}, 2);
  EXPECT_FALSE(st.ok());
  auto all = (*store)->LoadAll();
  ASSERT_TRUE(all.ok());
  EXPECT_EQ((*all)[0].messages.size(), 1u);
}

TEST(StoreTest, MigratesAVersionOneDatabaseKeepingItsData) {
  testing::TempDir dir;
  const std::string path = dir.File("kvkeep.db");
  // A database as the first release wrote it: schema version 1, no tool_latency table.
  RawExec(path, R"sql(
    CREATE TABLE schema_version (version INTEGER NOT NULL);
    INSERT INTO schema_version VALUES (1);
    CREATE TABLE sessions (
      owner_uid INTEGER NOT NULL, id TEXT NOT NULL, created_us INTEGER NOT NULL,
      updated_us INTEGER NOT NULL, model TEXT NOT NULL, closed INTEGER NOT NULL DEFAULT 0,
      PRIMARY KEY (owner_uid, id));
    CREATE TABLE messages (
      owner_uid INTEGER NOT NULL, session_id TEXT NOT NULL, seq INTEGER NOT NULL,
      role TEXT NOT NULL, content TEXT NOT NULL, name TEXT, tool_call_id TEXT,
      num_tokens INTEGER NOT NULL, tokens BLOB NOT NULL,
      PRIMARY KEY (owner_uid, session_id, seq));
    CREATE TABLE tool_events (
      id INTEGER PRIMARY KEY AUTOINCREMENT, owner_uid INTEGER NOT NULL,
      session_id TEXT NOT NULL, tool TEXT NOT NULL, args TEXT NOT NULL,
      begin_us INTEGER NOT NULL, end_us INTEGER, duration_us INTEGER);
    INSERT INTO sessions VALUES (5, 'old', 1, 2, 'tiny', 0);
    INSERT INTO messages VALUES (5, 'old', 0, 'user', 'hello', NULL, NULL, 2, x'0100000002000000');
    INSERT INTO tool_events (owner_uid, session_id, tool, args, begin_us, end_us, duration_us)
      VALUES (5, 'old', 'grep', '-r x', 100, 350, 250);
  )sql");
  auto store = Store::Open(path);
  ASSERT_TRUE(store.ok()) << store.status().ToString();
  EXPECT_EQ(*(*store)->SchemaVersion(), Store::LatestSchemaVersion());
  auto all = (*store)->LoadAll();
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->size(), 1u);
  EXPECT_EQ((*all)[0].messages[0].tokens, (std::vector<int32_t>{1, 2}));
  // Migration 2 back-filled the latency samples from the finished tool events.
  auto samples = (*store)->ToolLatencySamples("grep");
  ASSERT_TRUE(samples.ok());
  EXPECT_EQ(*samples, std::vector<int64_t>{250});
}

TEST(StoreTest, RefusesADatabaseFromTheFuture) {
  testing::TempDir dir;
  const std::string path = dir.File("kvkeep.db");
  RawExec(path,
          "CREATE TABLE schema_version (version INTEGER NOT NULL);"
          "INSERT INTO schema_version VALUES (999);");
  auto store = Store::Open(path);
  EXPECT_FALSE(store.ok());
}

}  // namespace
}  // namespace kvkeep
