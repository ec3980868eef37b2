// The VM state directory: stale state cleaned, running VMs left alone, and
// VMs started at the same time never taken for each other.
#include <gtest/gtest.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <fstream>
#include <memory>
#include <string>
#include <thread>

#include "unit/test_util.h"
#include "util/error.h"
#include "util/unique_fd.h"
#include "vm/state_dir.h"

using namespace ocivm;

namespace {

bool exists(const std::string& p) {
    struct stat st;
    return ::lstat(p.c_str(), &st) == 0;
}

// OCIVM_RUNTIME_DIR pointed at a directory of the test's own.
class StateDirTest : public ::testing::Test {
protected:
    void SetUp() override {
        root_ = test::make_temp_dir();
        ::setenv("OCIVM_RUNTIME_DIR", root_.c_str(), 1);
        base_ = vm::StateDir::base_dir();
    }
    void TearDown() override {
        ::unsetenv("OCIVM_RUNTIME_DIR");
        test::remove_tree(root_);
    }
    // The state another ocivm left when it was killed (nobody holds its lock).
    void stale(const std::string& name, bool rm) {
        std::string d = base_ + "/" + name;
        ASSERT_EQ(::mkdir(d.c_str(), 0700), 0);
        std::ofstream(d + "/lock");
        std::ofstream(d + "/initrd.cpio") << "cpio";
        std::ofstream(d + "/console.log") << "log";
        if (rm) std::ofstream(d + "/rm");
    }
    std::string root_, base_;
};

}  // namespace

TEST_F(StateDirTest, StaleStateIsCleanedAndRunningStateKept) {
    stale("killed-rm", true);
    stale("killed-keep", false);
    {
        vm::StateDir running("running", true);
        vm::StateDir::clean_stale(base_);
        EXPECT_TRUE(exists(running.path() + "/lock")) << "a running VM's state was cleaned";
        EXPECT_FALSE(exists(base_ + "/killed-rm")) << "--rm state of a killed ocivm stays";
        EXPECT_FALSE(exists(base_ + "/killed-keep/initrd.cpio")) << "the initramfs copy stays";
        EXPECT_TRUE(exists(base_ + "/killed-keep/console.log")) << "logs kept without --rm went";
        try {
            vm::StateDir again("running", true);
            ADD_FAILURE() << "two VMs got the same name";
        } catch (const Error& e) {
            EXPECT_NE(std::string(e.what()).find("already running"), std::string::npos) << e.what();
        }
    }
    EXPECT_FALSE(exists(base_ + "/running")) << "--rm state outlived its VM";
}

// Two ocivm starting at once: one's clean-up could take the other's fresh
// lock in the moment before its owner did, and the owner then failed with
// "already running" (or lost its state to the clean-up).
TEST_F(StateDirTest, VmsStartingTogetherNeverCollide) {
    std::atomic<bool> done{false};
    std::atomic<int> collisions{0};
    std::thread cleaner([&] {
        while (!done.load()) {
            try {
                vm::StateDir other("cleaner", true);  // starts clean up like any ocivm
            } catch (const Error&) {
                collisions++;
            }
        }
    });
    std::string first_error;
    for (int i = 0; i < 3000; ++i) {
        try {
            vm::StateDir s("vm-" + std::to_string(i % 4), true);
            if (!exists(s.path() + "/lock")) first_error = "state removed under a running VM";
        } catch (const Error& e) {
            if (first_error.empty()) first_error = e.what();
        }
    }
    done = true;
    cleaner.join();
    EXPECT_EQ(first_error, "");
    EXPECT_EQ(collisions.load(), 0);
}

// The same moment, made to last: another ocivm holds the vms directory's
// lock while its new state directory exists unlocked. A start meanwhile
// waits for it, and then finds that VM running, not stale.
TEST_F(StateDirTest, AStartWaitsForAnotherStartsLockedMoment) {
    UniqueFd base(::open(base_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    ASSERT_TRUE(base);
    ASSERT_EQ(::flock(base.get(), LOCK_EX), 0);
    std::string other = base_ + "/starting";
    ASSERT_EQ(::mkdir(other.c_str(), 0700), 0);
    UniqueFd other_lock(::open((other + "/lock").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
    std::ofstream(other + "/rm");
    std::atomic<bool> started{false};
    std::string error;
    std::thread t([&] {
        try {
            vm::StateDir s("second", true);
        } catch (const Error& e) {
            error = e.what();
        }
        started = true;
    });
    // Give the second start every chance to run ahead (a start that does
    // not wait is done in well under this).
    for (int i = 0; i < 50 && !started.load(); ++i) ::usleep(10000);
    EXPECT_FALSE(started.load()) << "the second start did not wait for the first";
    ASSERT_EQ(::flock(other_lock.get(), LOCK_EX | LOCK_NB), 0);  // the first VM now runs
    ASSERT_EQ(::flock(base.get(), LOCK_UN), 0);
    t.join();
    EXPECT_EQ(error, "");
    EXPECT_TRUE(exists(other + "/lock")) << "a start removed the state of a VM that was starting";
}

// A finishing VM's --rm removal used to run without the vms directory's
// lock: a VM of the same name starting meanwhile could find the directory
// still there, make its own lock in it, and then lose lock and state to
// the removal. The removal now waits for the lock like a start and a
// clean-up do.
TEST_F(StateDirTest, RemovalWaitsForTheVmsDirectorysLock) {
    auto s = std::make_unique<vm::StateDir>("finishing", true);
    std::string dir = s->path();
    UniqueFd base(::open(base_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    ASSERT_TRUE(base);
    ASSERT_EQ(::flock(base.get(), LOCK_EX), 0);  // another ocivm starting, or cleaning up
    std::atomic<bool> removed{false};
    std::thread t([&] {
        s.reset();
        removed = true;
    });
    // A removal that does not wait is done in well under this.
    for (int i = 0; i < 50 && !removed.load(); ++i) ::usleep(10000);
    EXPECT_FALSE(removed.load()) << "the removal did not wait for the vms directory's lock";
    EXPECT_TRUE(exists(dir + "/lock")) << "the state directory went while another ocivm held the vms directory";
    ASSERT_EQ(::flock(base.get(), LOCK_UN), 0);
    t.join();
    EXPECT_FALSE(exists(dir)) << "--rm state outlived its VM";
}

// What the removal deletes is the directory ocivm made, reached from the
// vms directory it opened, never through a symbolic link planted in the
// runtime directory since: not in place of the vms directory (the old
// remove_all of its path went through it and emptied the target), not in
// place of the state directory.
TEST_F(StateDirTest, RemovalFollowsNoPlantedSymlink) {
    std::string victim = root_ + "/victim";
    ASSERT_EQ(::mkdir(victim.c_str(), 0700), 0);
    ASSERT_EQ(::mkdir((victim + "/planted").c_str(), 0700), 0);
    std::ofstream(victim + "/planted/keep") << "not ocivm's";
    std::ofstream(victim + "/keep") << "not ocivm's";

    auto s = std::make_unique<vm::StateDir>("planted", true);
    std::string real = root_ + "/vms.real";
    ASSERT_EQ(::rename(base_.c_str(), real.c_str()), 0);
    ASSERT_EQ(::symlink(victim.c_str(), base_.c_str()), 0);
    s.reset();
    EXPECT_TRUE(exists(victim + "/planted/keep")) << "the removal followed a link in place of the vms directory";
    EXPECT_FALSE(exists(real + "/planted")) << "the VM's own state directory stayed";
    ASSERT_EQ(::unlink(base_.c_str()), 0);
    ASSERT_EQ(::rename(real.c_str(), base_.c_str()), 0);

    s = std::make_unique<vm::StateDir>("swapped", true);
    std::string dir = s->path();
    ASSERT_EQ(::rename(dir.c_str(), (dir + ".moved").c_str()), 0);
    ASSERT_EQ(::symlink(victim.c_str(), dir.c_str()), 0);
    s.reset();
    EXPECT_TRUE(exists(victim + "/keep")) << "the removal followed a link in place of the state directory";
    EXPECT_FALSE(exists(dir)) << "the planted link stayed";
}
