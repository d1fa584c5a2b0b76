#include "tools/replay/report.h"

#include <sys/wait.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <numeric>
#include <sstream>

#include "base/file.h"

namespace kvkeep::replay {
namespace {

using nlohmann::json;

std::string CsvField(const std::string& s) {
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  std::string out = "\"";
  for (char c : s) out += c == '"' ? std::string("\"\"") : std::string(1, c);
  return out + "\"";
}

Status WriteText(const std::string& path, const std::string& text) {
  return DefaultEnv()->WriteFileAtomic(path, text);
}

std::string DataFile(const std::string& out_dir, const std::string& what,
                     const std::string& policy) {
  return JoinPath(out_dir, "plot-" + what + "-" + policy + ".dat");
}

}  // namespace

double Quantile(std::vector<double> values, double q) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  size_t rank = static_cast<size_t>(std::ceil(q * static_cast<double>(values.size())));
  return values[std::min(values.size() - 1, rank == 0 ? 0 : rank - 1)];
}

PolicySummary Summarize(const ReplayResult& r) {
  PolicySummary s;
  std::vector<double> ttft;
  int64_t hit_tokens = 0;
  for (const TurnRecord& t : r.turns) {
    ttft.push_back(t.ttft_ms);
    s.context_tokens += t.context_tokens;
    s.first_prefill_tokens += t.first_prefill_tokens;
    s.reprefill_tokens += t.reprefill_tokens;
    hit_tokens += std::min(t.cached_tokens, t.context_tokens);
    s.prompt_tokens += t.prompt_tokens;
    s.cached_tokens += t.cached_tokens;
    s.recomputed_tokens += t.recomputed_tokens;
    s.generated_tokens += t.generated_tokens;
  }
  s.turns = static_cast<int>(r.turns.size());
  s.mean_ttft_ms = ttft.empty() ? 0 : std::accumulate(ttft.begin(), ttft.end(), 0.0) / ttft.size();
  s.p50_ttft_ms = Quantile(ttft, 0.5);
  s.p99_ttft_ms = Quantile(ttft, 0.99);
  double jct = 0;
  for (const SessionRecord& sr : r.sessions) {
    ++s.sessions;
    s.failed_sessions += !sr.error.empty();
    s.clipped_sessions += sr.clipped;
    s.skipped_sessions += sr.clipped && sr.turns == 0;
    jct += sr.jct_s;
  }
  s.mean_jct_s = s.sessions ? jct / s.sessions : 0;
  s.hit_ratio = s.context_tokens
                    ? static_cast<double>(hit_tokens) / static_cast<double>(s.context_tokens)
                    : 0;
  if (!r.occupancy.empty()) {
    const OccupancySample &first = r.occupancy.front(), &last = r.occupancy.back();
    s.pins_granted = last.pins_granted - first.pins_granted;
    s.pins_used = last.pins_used - first.pins_used;
    s.pins_expired = last.pins_expired - first.pins_expired;
    s.pins_violated = last.pins_violated - first.pins_violated;
  }
  s.wall_s = r.wall_s;
  return s;
}

Status WriteReport(const std::string& out_dir, const ReportInput& in) {
  json policies = json::object();
  std::ostringstream turns, sessions, occupancy;
  turns << "policy,session,turn,start_s,prompt_tokens,cached_tokens,cached_device,cached_host,"
           "cached_disk,recomputed_tokens,generated_tokens,ttft_ms,decode_ms,latency_ms,tool,"
           "tool_wait_s,context_tokens,first_prefill_tokens,reprefill_tokens,episode,"
           "episode_served_by\n";
  sessions << "policy,session,turns,arrival_s,jct_s,error\n";
  occupancy << "policy,t_s,blocks_total,blocks_used,blocks_cached,blocks_pinned\n";
  for (const std::string& p : in.policies) {
    const ReplayResult& r = in.results.at(p);
    PolicySummary s = Summarize(r);
    policies[p] = {{"mean_ttft_ms", s.mean_ttft_ms},
                   {"p50_ttft_ms", s.p50_ttft_ms},
                   {"p99_ttft_ms", s.p99_ttft_ms},
                   {"mean_jct_s", s.mean_jct_s},
                   {"hit_ratio", s.hit_ratio},
                   {"context_tokens", s.context_tokens},
                   {"first_prefill_tokens", s.first_prefill_tokens},
                   {"reprefill_tokens", s.reprefill_tokens},
                   {"prompt_tokens", s.prompt_tokens},
                   {"cached_tokens", s.cached_tokens},
                   {"recomputed_tokens", s.recomputed_tokens},
                   {"generated_tokens", s.generated_tokens},
                   {"turns", s.turns},
                   {"sessions", s.sessions},
                   {"failed_sessions", s.failed_sessions},
                   {"clipped_sessions", s.clipped_sessions},
                   {"skipped_sessions", s.skipped_sessions},
                   {"pins_granted", s.pins_granted},
                   {"pins_used", s.pins_used},
                   {"pins_expired", s.pins_expired},
                   {"pins_violated", s.pins_violated},
                   {"wall_s", s.wall_s}};
    for (const TurnRecord& t : r.turns) {
      turns << CsvField(p) << ',' << CsvField(t.session) << ',' << t.turn << ',' << t.start_s << ','
            << t.prompt_tokens << ',' << t.cached_tokens << ',' << t.cached_device << ','
            << t.cached_host << ',' << t.cached_disk << ',' << t.recomputed_tokens << ','
            << t.generated_tokens << ',' << t.ttft_ms << ',' << t.decode_ms << ',' << t.latency_ms
            << ',' << CsvField(t.tool) << ',' << t.tool_wait_s << ',' << t.context_tokens << ','
            << t.first_prefill_tokens << ',' << t.reprefill_tokens << ','
            << (t.episode >= 0 ? std::to_string(t.episode) : std::string()) << ','
            << CsvField(t.episode_served_by) << '\n';
    }
    for (const SessionRecord& sr : r.sessions) {
      sessions << CsvField(p) << ',' << CsvField(sr.session) << ',' << sr.turns << ','
               << sr.arrival_s << ',' << sr.jct_s << ',' << CsvField(sr.error) << '\n';
    }
    for (const OccupancySample& o : r.occupancy) {
      occupancy << CsvField(p) << ',' << o.t_s << ',' << o.blocks_total << ',' << o.blocks_used
                << ',' << o.blocks_cached << ',' << o.blocks_pinned << '\n';
    }
  }
  json report = {{"policies", policies}, {"params", in.params}};
  RETURN_IF_ERROR(WriteText(JoinPath(out_dir, "report.json"), report.dump(2) + "\n"));
  RETURN_IF_ERROR(WriteText(JoinPath(out_dir, "turns.csv"), turns.str()));
  RETURN_IF_ERROR(WriteText(JoinPath(out_dir, "sessions.csv"), sessions.str()));
  return WriteText(JoinPath(out_dir, "occupancy.csv"), occupancy.str());
}

std::string SummaryTable(const ReportInput& in) {
  std::ostringstream out;
  char line[512];
  std::snprintf(line, sizeof(line), "%-10s %8s %6s %10s %10s %10s %10s %9s %12s %12s %12s %18s\n",
                "policy", "sessions", "turns", "ttft mean", "ttft p50", "ttft p99", "JCT mean",
                "hit ratio", "context tok", "first pf", "re-prefill", "pins used/exp/vio");
  out << line;
  for (const std::string& p : in.policies) {
    PolicySummary s = Summarize(in.results.at(p));
    std::snprintf(line, sizeof(line),
                  "%-10s %8d %6d %8.1fms %8.1fms %8.1fms %9.2fs %9.3f %12lld %12lld %12lld "
                  "%18s\n",
                  p.c_str(), s.sessions, s.turns, s.mean_ttft_ms, s.p50_ttft_ms, s.p99_ttft_ms,
                  s.mean_jct_s, s.hit_ratio, static_cast<long long>(s.context_tokens),
                  static_cast<long long>(s.first_prefill_tokens),
                  static_cast<long long>(s.reprefill_tokens),
                  (std::to_string(s.pins_used) + "/" + std::to_string(s.pins_expired) + "/" +
                   std::to_string(s.pins_violated))
                      .c_str());
    out << line;
    if (s.failed_sessions > 0) {
      out << "           (" << s.failed_sessions << " sessions failed: see sessions.csv)\n";
    }
    if (s.clipped_sessions > 0) {
      out << "           (" << s.clipped_sessions << " sessions longer than the model's context of "
          << in.results.at(p).max_context_tokens << " tokens were clipped; " << s.skipped_sessions
          << " of them ran no model turn)\n";
    }
  }
  return out.str();
}

Status CheckNotEmpty(const ReportInput& in) {
  std::string why;
  for (const std::string& p : in.policies) {
    const ReplayResult& r = in.results.at(p);
    if (!r.turns.empty()) return Status::OK();
    const PolicySummary s = Summarize(r);
    std::string first_error;
    for (const SessionRecord& sr : r.sessions) {
      if (!sr.error.empty()) {
        first_error = sr.error;
        break;
      }
    }
    why += (why.empty() ? "" : "; ") + p + ": " + std::to_string(s.sessions) + " sessions, " +
           std::to_string(s.skipped_sessions) + " did not fit the model's context of " +
           std::to_string(r.max_context_tokens) + " tokens, " + std::to_string(s.failed_sessions) +
           " failed" + (first_error.empty() ? "" : " (first error: " + first_error + ")");
  }
  if (in.policies.empty()) why = "no policy was run";
  return Status::InvalidArgument(
      "the replay ran no model turn, so there is nothing to report or plot (" + why +
      "); use a model with a longer context, --max-prompt-tokens, or another trace");
}

Result<std::vector<std::string>> WritePlots(const std::string& out_dir, const ReportInput& in) {
  if (std::system("command -v gnuplot >/dev/null 2>&1") != 0) {
    return Status::Unavailable("gnuplot is not installed (scripts/setup installs gnuplot-nox)");
  }
  std::string ttft_plot, occ_plot, hit_plot;
  for (const std::string& p : in.policies) {
    const ReplayResult& r = in.results.at(p);
    std::vector<double> ttft;
    for (const TurnRecord& t : r.turns) ttft.push_back(t.ttft_ms);
    std::sort(ttft.begin(), ttft.end());
    std::ostringstream cdf;
    for (size_t i = 0; i < ttft.size(); ++i) {
      cdf << ttft[i] << ' ' << static_cast<double>(i + 1) / ttft.size() << '\n';
    }
    RETURN_IF_ERROR(WriteText(DataFile(out_dir, "ttft", p), cdf.str()));

    std::ostringstream occ;
    for (const OccupancySample& o : r.occupancy) {
      double total = o.blocks_total > 0 ? static_cast<double>(o.blocks_total) : 1.0;
      occ << o.t_s << ' ' << o.blocks_used / total << ' ' << o.blocks_cached / total << ' '
          << o.blocks_pinned / total << '\n';
    }
    RETURN_IF_ERROR(WriteText(DataFile(out_dir, "occupancy", p), occ.str()));

    std::map<int, std::pair<int64_t, int64_t>> by_turn;  // turn -> (cached, context)
    for (const TurnRecord& t : r.turns) {
      by_turn[t.turn].first += std::min(t.cached_tokens, t.context_tokens);
      by_turn[t.turn].second += t.context_tokens;
    }
    std::ostringstream hit;
    for (const auto& [turn, cp] : by_turn) {
      hit << turn << ' ' << (cp.second ? static_cast<double>(cp.first) / cp.second : 0) << '\n';
    }
    RETURN_IF_ERROR(WriteText(DataFile(out_dir, "hit", p), hit.str()));

    std::string sep = ttft_plot.empty() ? "" : ", ";
    ttft_plot +=
        sep + "'" + DataFile(out_dir, "ttft", p) + "' using 1:2 with steps lw 2 title '" + p + "'";
    const std::string occ_file = "'" + DataFile(out_dir, "occupancy", p) + "'";
    occ_plot += sep + occ_file + " using 1:2 with lines lw 2 title '" + p + " in use', " +
                occ_file + " using 1:3 with lines dt 3 title '" + p + " cached (reusable)', " +
                occ_file + " using 1:4 with lines dt 2 title '" + p + " pinned'";
    hit_plot +=
        sep + "'" + DataFile(out_dir, "hit", p) + "' using 1:2 with linespoints title '" + p + "'";
  }
  std::vector<std::string> pngs = {JoinPath(out_dir, "ttft_cdf.png"),
                                   JoinPath(out_dir, "kv_occupancy.png"),
                                   JoinPath(out_dir, "hit_ratio_by_turn.png")};
  std::ostringstream gp;
  gp << "set terminal pngcairo size 900,560 noenhanced\nset grid\nset key bottom right\n"
     << "set output '" << pngs[0] << "'\nset title 'Time to first token, CDF per policy'\n"
     << "set xlabel 'TTFT (ms)'\nset ylabel 'fraction of model turns'\nset logscale x\n"
     << "set yrange [0:1.02]\n"
     << "plot " << ttft_plot << "\n"
     << "unset logscale x\nset key top right\n"
     << "set output '" << pngs[1]
     << "'\nset title 'Device KV pool: blocks in use, cached and pinned'\n"
     << "set xlabel 'time (s)'\nset ylabel 'fraction of the pool'\nset yrange [0:1.05]\n"
     << "plot " << occ_plot << "\n"
     << "set output '" << pngs[2] << "'\nset title 'Prefix-cache hit ratio by turn'\n"
     << "set xlabel 'model turn index'\nset ylabel 'cached / context tokens'\n"
     << "plot " << hit_plot << "\n";
  std::string script = JoinPath(out_dir, "plots.gnuplot");
  RETURN_IF_ERROR(WriteText(script, gp.str()));
  std::string cmd = "gnuplot '" + script + "' 2>'" + JoinPath(out_dir, "gnuplot.log") + "'";
  int rc = std::system(cmd.c_str());
  if (rc != 0) {
    return Status::Internal("gnuplot failed (exit " + std::to_string(WEXITSTATUS(rc)) + "); see " +
                            JoinPath(out_dir, "gnuplot.log"));
  }
  return pngs;
}

}  // namespace kvkeep::replay
