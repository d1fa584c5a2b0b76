// Store integrity: row checksums, PRAGMA quick_check on open, a damaged WAL reported (and
// kept), and group commit (concurrent writers, each acknowledged after its batch commits).
#include <gtest/gtest.h>
#include <sqlite3.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <thread>

#include "daemon/store.h"
#include "daemon/wal_check.h"
#include "tests/testlib/test_util.h"

namespace kvkeep {
namespace {

namespace fs = std::filesystem;

StoredMessage Msg(int64_t seq, std::string content) {
  StoredMessage m;
  m.seq = seq;
  m.role = "user";
  m.content = std::move(content);
  m.tokens = {static_cast<int32_t>(seq), 7, 8};
  return m;
}

StoredSession NewSession(const std::string& id, int num_messages) {
  StoredSession s;
  s.owner_uid = 1000;
  s.id = id;
  s.model = "tiny";
  for (int i = 0; i < num_messages; ++i)
    s.messages.push_back(Msg(i, id + " message " + std::to_string(i)));
  return s;
}

void RawExec(const std::string& path, const std::string& sql) {
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  char* err = nullptr;
  EXPECT_EQ(sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &err), SQLITE_OK) << (err ? err : "");
  sqlite3_free(err);
  sqlite3_close(db);
}

// Overwrites n bytes at offset with `byte`.
void Scribble(const std::string& path, int64_t offset, size_t n, char byte) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  ASSERT_TRUE(f.good()) << path;
  f.seekp(offset);
  std::string junk(n, byte);
  f.write(junk.data(), static_cast<std::streamsize>(junk.size()));
}

const StoredSession* FindStored(const std::vector<StoredSession>& all, const std::string& id) {
  for (const StoredSession& s : all) {
    if (s.id == id) return &s;
  }
  return nullptr;
}

TEST(StoreIntegrityTest, ATamperedRowMarksOnlyItsSessionDamaged) {
  testing::TempDir dir;
  const std::string path = dir.File("kvkeep.db");
  {
    auto store = Store::Open(path);
    ASSERT_TRUE(store.ok()) << store.status().ToString();
    ASSERT_TRUE((*store)->CreateSession(NewSession("a", 3)).ok());
    ASSERT_TRUE((*store)->CreateSession(NewSession("b", 2)).ok());
    ASSERT_TRUE((*store)->CopySession(1000, "b", "b-fork", 5).ok());  // copies checksums
  }
  RawExec(path, "UPDATE messages SET content = 'tampered' WHERE session_id = 'a' AND seq = 1");
  auto store = Store::Open(path);
  ASSERT_TRUE(store.ok()) << store.status().ToString();
  auto all = (*store)->LoadAll();
  ASSERT_TRUE(all.ok()) << all.status().ToString();
  const StoredSession* a = FindStored(*all, "a");
  ASSERT_NE(a, nullptr);
  EXPECT_NE(a->damage.find("message 1 failed its checksum"), std::string::npos) << a->damage;
  for (const char* intact : {"b", "b-fork"}) {
    const StoredSession* s = FindStored(*all, intact);
    ASSERT_NE(s, nullptr) << intact;
    EXPECT_EQ(s->damage, "") << intact;
    EXPECT_EQ(s->messages.size(), 2u) << intact;
  }
}

TEST(StoreIntegrityTest, TokensThatDisagreeWithNumTokensAreDamage) {
  testing::TempDir dir;
  const std::string path = dir.File("kvkeep.db");
  {
    auto store = Store::Open(path);
    ASSERT_TRUE(store.ok());
    ASSERT_TRUE((*store)->CreateSession(NewSession("a", 2)).ok());
  }
  RawExec(path, "UPDATE messages SET tokens = x'0100' WHERE seq = 0");
  auto store = Store::Open(path);
  ASSERT_TRUE(store.ok());
  auto all = (*store)->LoadAll();
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->size(), 1u);
  EXPECT_NE((*all)[0].damage, "");
}

TEST(StoreIntegrityTest, QuickCheckRefusesADamagedPage) {
  testing::TempDir dir;
  const std::string path = dir.File("kvkeep.db");
  {
    auto store = Store::Open(path);
    ASSERT_TRUE(store.ok());
    for (int s = 0; s < 40; ++s) {
      StoredSession ss = NewSession("s" + std::to_string(s), 10);
      for (StoredMessage& m : ss.messages) m.content.append(300, 'x');
      ASSERT_TRUE((*store)->CreateSession(ss).ok());
    }
  }  // closing checkpoints the WAL into the database file
  const int64_t size = static_cast<int64_t>(fs::file_size(path));
  ASSERT_GT(size, 40 * 4096);
  Scribble(path, size / 2 / 4096 * 4096, 4096, '\xff');  // a whole page in the middle
  auto store = Store::Open(path);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), StatusCode::kCorruption) << store.status().ToString();
  EXPECT_NE(store.status().message().find("quick_check"), std::string::npos);
}

// A crash image: the database and its WAL copied while the store is open (what kill -9
// leaves on disk).
void CopyCrashImage(const std::string& from_dir, const std::string& to_dir) {
  fs::create_directories(to_dir);
  for (const char* f : {"kvkeep.db", "kvkeep.db-wal"}) {
    fs::copy_file(from_dir + "/" + f, to_dir + "/" + f);
  }
}

TEST(StoreIntegrityTest, ADamagedWalIsReportedAndKeptAndACleanOneIsNot) {
  testing::TempDir dir;
  const std::string live = dir.File("live");
  fs::create_directories(live);
  auto store = Store::Open(live + "/kvkeep.db");
  ASSERT_TRUE(store.ok());
  ASSERT_TRUE((*store)->CreateSession(NewSession("s", 1)).ok());
  for (int i = 1; i < 50; ++i) {
    ASSERT_TRUE((*store)->AppendMessages(1000, "s", {Msg(i, "m" + std::to_string(i))}, i).ok());
  }
  CopyCrashImage(live, dir.File("clean"));
  CopyCrashImage(live, dir.File("bad"));
  store->reset();

  auto clean = ScanWal(dir.File("clean/kvkeep.db-wal"));
  ASSERT_TRUE(clean.ok()) << clean.status().ToString();
  ASSERT_TRUE(clean->exists && clean->header_valid);
  EXPECT_FALSE(clean->damaged());
  EXPECT_GE(clean->num_commits, 50);  // one per write, plus the migrations
  EXPECT_EQ(clean->num_valid_frames, clean->num_frames);

  // One byte of a page in the middle of the log.
  const std::string bad_wal = dir.File("bad/kvkeep.db-wal");
  const int64_t frame_bytes = 24 + 4096;
  const int64_t middle = clean->num_frames / 2;
  Scribble(bad_wal, 32 + middle * frame_bytes + 24 + 100, 1, '\x5a');
  auto bad = ScanWal(bad_wal);
  ASSERT_TRUE(bad.ok());
  EXPECT_TRUE(bad->damaged());
  EXPECT_EQ(bad->first_bad_frame, middle);
  EXPECT_GT(bad->num_commits_after_bad, 0);

  // SQLite itself drops the tail in silence; the store says so and keeps the WAL.
  auto reopened = Store::Open(dir.File("bad/kvkeep.db"));
  ASSERT_TRUE(reopened.ok()) << reopened.status().ToString();
  auto all = (*reopened)->LoadAll();
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->size(), 1u);
  EXPECT_LT((*all)[0].messages.size(), 50u);  // what SQLite's recovery keeps
  bool kept = false;
  for (const auto& e : fs::directory_iterator(dir.File("bad"))) {
    kept = kept || e.path().filename().string().rfind("kvkeep.db-wal.damaged-", 0) == 0;
  }
  EXPECT_TRUE(kept);
  // The clean image keeps all 50.
  auto clean_store = Store::Open(dir.File("clean/kvkeep.db"));
  ASSERT_TRUE(clean_store.ok());
  auto clean_all = (*clean_store)->LoadAll();
  ASSERT_TRUE(clean_all.ok());
  EXPECT_EQ((*clean_all)[0].messages.size(), 50u);
}

TEST(StoreIntegrityTest, ConcurrentWritersAreAllCommittedAndBatched) {
  testing::TempDir dir;
  const std::string path = dir.File("kvkeep.db");
  constexpr int kThreads = 8;
  constexpr int kPerThread = 40;
  {
    auto store = Store::Open(path);
    ASSERT_TRUE(store.ok());
    Store* st = store->get();
    for (int t = 0; t < kThreads; ++t) {
      ASSERT_TRUE(st->CreateSession(NewSession("t" + std::to_string(t), 1)).ok());
    }
    const StoreStats before = st->stats();
    std::atomic<int> failures{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([st, t, &failures] {
        const std::string id = "t" + std::to_string(t);
        for (int i = 1; i <= kPerThread; ++i) {
          if (!st->AppendMessages(1000, id, {Msg(i, id + " message " + std::to_string(i))}, i)
                   .ok()) {
            failures++;
          }
        }
        // A duplicate seq fails alone, inside whatever batch it lands in.
        if (st->AppendMessages(1000, id, {Msg(1, "dup")}, 0).ok()) failures++;
      });
    }
    for (auto& th : threads) th.join();
    EXPECT_EQ(failures.load(), 0);
    const StoreStats after = st->stats();
    const int64_t writes = after.num_writes - before.num_writes;
    const int64_t commits = after.num_commits - before.num_commits;
    EXPECT_EQ(writes, kThreads * (kPerThread + 1));
    EXPECT_LT(commits, writes) << "no write shared a commit";
  }
  auto store = Store::Open(path);
  ASSERT_TRUE(store.ok());
  auto all = (*store)->LoadAll();
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->size(), static_cast<size_t>(kThreads));
  for (const StoredSession& s : *all) {
    EXPECT_EQ(s.damage, "");
    ASSERT_EQ(s.messages.size(), static_cast<size_t>(kPerThread + 1)) << s.id;
    for (int i = 1; i <= kPerThread; ++i) {
      EXPECT_EQ(s.messages[i].content, s.id + " message " + std::to_string(i));
    }
  }
}

// Issue 11, fault injection: the Nth SQLite write fails (disk full, busy, I/O error). The
// failing write leaves nothing behind, the writes around it are unaffected, the store is
// consistent on reopen, and writing works again once the fault clears.
TEST(StoreIntegrityTest, InjectedWriteFaultsLeaveTheStoreConsistentAndRecover) {
  testing::TempDir dir;
  const std::string path = dir.File("kvkeep.db");
  {
    auto store = Store::Open(path);
    ASSERT_TRUE(store.ok());
    Store* st = store->get();
    ASSERT_TRUE(st->CreateSession(NewSession("f", 2)).ok());
    int64_t seq = 2;
    for (int code : {SQLITE_FULL, SQLITE_BUSY, SQLITE_IOERR}) {
      st->TEST_InjectFault({.first_failing = 2, .count = 2, .sqlite_code = code});
      ASSERT_TRUE(st->AppendMessages(1000, "f", {Msg(seq, "ok before")}, 1).ok());
      ++seq;
      for (int i = 0; i < 2; ++i) {
        Status failed = st->AppendMessages(1000, "f", {Msg(seq, "lost")}, 1);
        EXPECT_EQ(failed.code(), StatusCode::kIOError);
        EXPECT_NE(failed.message().find(sqlite3_errstr(code)), std::string::npos)
            << failed.ToString();
      }
      // Nothing of the failed writes is there: the same seq is free, and the fault is over.
      ASSERT_TRUE(st->AppendMessages(1000, "f", {Msg(seq, "ok after")}, 1).ok()) << code;
      ++seq;
    }
    // A failing CreateSession leaves no session row either.
    st->TEST_InjectFault({.first_failing = 1, .count = 1, .sqlite_code = SQLITE_FULL});
    EXPECT_FALSE(st->CreateSession(NewSession("g", 1)).ok());
    ASSERT_TRUE(st->CreateSession(NewSession("g", 1)).ok());
  }
  auto store = Store::Open(path);
  ASSERT_TRUE(store.ok());
  auto all = (*store)->LoadAll();
  ASSERT_TRUE(all.ok());
  const StoredSession* f = FindStored(*all, "f");
  ASSERT_NE(f, nullptr);
  EXPECT_TRUE(f->damage.empty()) << f->damage;
  ASSERT_EQ(f->messages.size(), 8u);  // 2 + 3 x (before, after)
  for (const StoredMessage& m : f->messages) EXPECT_EQ(m.content.find("lost"), std::string::npos);
  ASSERT_NE(FindStored(*all, "g"), nullptr);
}

}  // namespace
}  // namespace kvkeep
