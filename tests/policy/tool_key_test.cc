// Tool keys on real agent commands (tests/fixtures/policy, and every mini-swe-agent
// command in ../shared/data when present) and on the shell forms the rules name.
#include "policy/tool_key.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>

#include "tests/testlib/test_util.h"

namespace kvkeep {
namespace {

using nlohmann::json;

TEST(ToolKey, RealCommandsFromThreeAgentFrameworks) {
  std::ifstream in(testing::FixturesDir() + "/policy/tool_commands.jsonl");
  ASSERT_TRUE(in.good());
  std::string line;
  int n = 0;
  std::set<std::string> sources;
  while (std::getline(in, line)) {
    json c = json::parse(line);
    const std::string tool = c["tool"], command = c["command"], want = c["key"];
    EXPECT_EQ(ToolKey(tool, command), want) << c["source"] << ": " << tool << " / " << command;
    sources.insert(c["source"].get<std::string>().substr(0, 5));
    ++n;
  }
  EXPECT_GE(n, 30);
  EXPECT_EQ(sources.size(), 3u);  // mini-, swe-a, openh
}

TEST(ToolKey, StripsDirectoryWrappersAndAssignments) {
  struct Case {
    const char* command;
    const char* key;
  } cases[] = {
      {"cd /testbed && timeout 300 python -m pytest -x tests", "pytest"},
      {"timeout -s KILL 60s pytest -q", "pytest"},
      {"PYTHONPATH=. DJANGO_SETTINGS_MODULE=x python3.11 runtests.py", "python"},
      {"env -i HOME=/tmp LANG=C pip3 install -e .", "pip"},
      {"sudo -u agent nice -n 5 make -j8", "make"},
      {"export A=1; source venv/bin/activate && /usr/bin/grep -rn foo .", "grep"},
      {"cd src; cd ..; ls", "ls"},
      {"(cd sub && ./configure --prefix=/x)", "configure"},
      {"  \n cat <<'EOF' > a.py\nprint(1)\nEOF", "cat"},
      {"2>/dev/null sed -n '1,5p' f", "sed"},
      {"VAR=$(git rev-parse HEAD) git log -1", "git"},
      {"python -u -m pip install x", "pip"},
      {"python -c 'import sys' && pytest", "python"},
      {"time nohup stdbuf -oL pytest -k 'a and b'", "pytest"},
      {"if grep -q x f; then echo y; fi", "grep"},
      {"echo 'a && b' | wc -l", "echo"},
      {"\"/opt/my tools/run.sh\" --fast", "run.sh"},
  };
  for (const Case& c : cases) EXPECT_EQ(ToolKey("bash", c.command), c.key) << c.command;
}

TEST(ToolKey, FallsBackToTheToolName) {
  EXPECT_EQ(ToolKey("bash", "cd /testbed"), "bash");  // runs no program
  EXPECT_EQ(ToolKey("bash", ""), "bash");
  EXPECT_EQ(ToolKey("str_replace_editor", "view /a/b.py"), "str_replace_editor");
  EXPECT_EQ(ToolKey("web_search", ""), "web_search");
  EXPECT_EQ(ToolKey("", ""), "unknown");
  EXPECT_EQ(ToolKey("", "pytest -x"), "pytest");
}

TEST(ToolKey, KeyFunctionsByName) {
  auto name = MakeToolKeyFunction("name");
  ASSERT_TRUE(name.ok());
  EXPECT_EQ((*name)("bash", "pytest -x"), "bash");
  ToolKeyOptions o;
  o.shell_tools = {"sh"};
  o.python_module_as_key = false;
  auto cmd = MakeToolKeyFunction("command", o);
  ASSERT_TRUE(cmd.ok());
  EXPECT_EQ((*cmd)("sh", "python -m pytest"), "python");
  EXPECT_EQ((*cmd)("bash", "python -m pytest"), "bash");  // not a shell tool here
  auto bad = MakeToolKeyFunction("first-word");
  ASSERT_FALSE(bad.ok());
  EXPECT_TRUE(bad.status().IsInvalidArgument());
  EXPECT_NE(bad.status().message().find("command, name"), std::string::npos);
}

TEST(ToolKey, EveryMiniSweAgentCommandGetsAProgramKey) {
  KVKEEP_REQUIRE_SHARED_DATA();
  namespace fs = std::filesystem;
  // Independent reference for the common form "[cd DIR && ]WORD ...": WORD.
  const std::regex simple(R"(^(?:cd [^&;|]+ && )?([A-Za-z][A-Za-z0-9_.-]*)(?:\s|$))");
  const std::set<std::string> wrappers = {"cd", "timeout", "env", "export", "sudo", "source"};
  int n = 0, simple_n = 0;
  std::map<std::string, int> counts;
  for (const auto& e :
       fs::directory_iterator(testing::SharedDataDir() + "/traces/mini-swe-agent-v2-deepseek")) {
    std::ifstream in(e.path());
    json doc = json::parse(in);
    for (const json& m : doc["messages"]) {
      if (!m.contains("tool_calls") || !m["tool_calls"].is_array()) continue;
      for (const json& tc : m["tool_calls"]) {
        json args = json::parse(tc["function"]["arguments"].get<std::string>());
        const std::string command = args.value("command", "");
        const std::string key = ToolKey("bash", command);
        ++n;
        ++counts[key];
        EXPECT_FALSE(key.empty());
        EXPECT_EQ(key.find_first_of(" \t\n'\"=$"), std::string::npos) << key << " <- " << command;
        EXPECT_EQ(wrappers.count(key), 0u) << command;
        std::smatch sm;
        if (std::regex_search(command, sm, simple) && sm[1].str().rfind("python", 0) != 0 &&
            sm[1] != "for" && wrappers.count(sm[1]) == 0) {
          ++simple_n;
          EXPECT_EQ(key, sm[1].str()) << command;
        }
      }
    }
  }
  EXPECT_GT(n, 1000);
  EXPECT_GT(simple_n, n / 2);
  // The programs the issue names are all among the learned keys.
  for (const char* k : {"pytest", "python", "grep", "pip", "sed", "cat"}) {
    EXPECT_GT(counts[k], 0) << k;
  }
}

}  // namespace
}  // namespace kvkeep
